"""A TCP proxy on loopback that can cut its connections off without a word, as a network partition does."""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.support.servers import free_port


class SilentProxy:
    """Forwards connections to `target_port`. `abandon()` silences every connection open at that moment for
    good: neither side hears from the other again, yet the client's socket stays open (its kernel and ours
    keep acknowledging), so only a timer of the client's own can end a wait on it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._pairs: list[tuple[socket.socket, socket.socket, threading.Event]] = []
        self._lock = threading.Lock()
        self._closed = False

    def start(self) -> SilentProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            silenced = threading.Event()
            with self._lock:
                self._pairs.append((client, server, silenced))
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(source, sink, silenced), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket, silenced: threading.Event) -> None:
        try:
            while data := source.recv(65536):
                if not silenced.is_set():
                    sink.sendall(data)
        except OSError:
            pass
        if not silenced.is_set():
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def abandon(self) -> int:
        """Silence every open connection; returns how many there were. New connections work as before."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for _, server, silenced in pairs:
            silenced.set()
            server.close()  # the database forgets it; the client is never told
        return len(pairs)

    def stop(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            for client, server, _ in self._pairs:
                client.close()
                server.close()
