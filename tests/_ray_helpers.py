"""Helpers for tests that look at the Ray this test process started: its listeners and processes."""
from __future__ import annotations

import ipaddress
import threading
import time

import psutil


def listeners() -> dict[tuple[str, int], str]:
    """{(ip, port): process name} of every TCP listener of this process and its descendants
    (the local Ray's GCS, raylet, agents and workers all descend from the driver). One read of
    the kernel's socket tables for all of them (per process it costs ~5x the CPU)."""
    me = psutil.Process()
    processes = {process.pid: process for process in [me, *me.children(recursive=True)]}
    found = {}
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status != psutil.CONN_LISTEN or connection.pid not in processes:
            continue
        try:
            process = processes[connection.pid]
            name = process.name()
            if name.startswith("ray::"):  # the kernel's name is cut at 15 characters; the title is not
                title = (process.cmdline() or [""])[0].split()
                if not title:  # a process exiting (a crashed worker): its name would be the cut
                    continue   # one; its listener was seen with its title while it lived
                name = title[0]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        found[(connection.laddr.ip, connection.laddr.port)] = name
    return found


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback


def ray_processes() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True)
            if p.name() in ("gcs_server", "raylet") or p.name().startswith("ray::")]


class ListenerWatch:
    """`with ListenerWatch() as watch: …` gathers `listeners()` every 0.2 s into `watch.seen`."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, int], str] = {}
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        try:
            while not self._done.is_set():
                self.seen.update(listeners())
                time.sleep(0.2)
        except BaseException as error:  # raised again by __exit__, not lost with the thread
            self.error = error

    def __enter__(self) -> "ListenerWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        if self.error is not None:
            raise self.error
        self.seen.update(listeners())
