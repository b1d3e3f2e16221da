"""A real TCP proxy in front of a service that cuts connections the way a dying endpoint does.

`CuttingProxy(upstream_port, match=b"/bucket/key", cut_after=N)` forwards bytes both ways; on a
connection whose request line holds `match`, it passes the first N bytes of the answer, then
shuts both sides down (the client sees the connection end mid-body, short of its Content-Length).
`cuts` limits how many answers are cut; `die=True` also stops listening after the first cut, so
later connections are refused, as when the server process is gone. Sockets are shut down before
they are closed: a close alone does not wake a thread blocked on the socket, nor end the connection.
"""

from __future__ import annotations

import socket
import threading


class CuttingProxy:
    def __init__(self, upstream_port: int, match: bytes, cut_after: int, cuts: int = 1, die: bool = False) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.match, self.cut_after, self.cuts_left, self.die = match, cut_after, cuts, die
        self.cut = 0  # answers cut so far
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed: the endpoint is gone
            upstream = socket.create_connection(self.upstream)
            self._open += [client, upstream]
            state = {"armed": False, "sent": 0}
            threading.Thread(target=self._pump_requests, args=(client, upstream, state), daemon=True).start()
            threading.Thread(target=self._pump_answers, args=(upstream, client, state), daemon=True).start()

    def _pump_requests(self, src: socket.socket, dst: socket.socket, state: dict) -> None:
        while data := self._recv(src):
            if b" " + self.match in data.split(b"\r\n", 1)[0] or self.match + b" " in data.split(b"\r\n", 1)[0]:
                with self._lock:
                    if self.cuts_left > 0:
                        self.cuts_left -= 1
                        state["armed"], state["sent"] = True, 0
            try:
                dst.sendall(data)
            except OSError:
                break
        self._close(dst)

    def _pump_answers(self, src: socket.socket, dst: socket.socket, state: dict) -> None:
        while data := self._recv(src):
            if state["armed"] and state["sent"] + len(data) > self.cut_after:
                try:
                    dst.sendall(data[: self.cut_after - state["sent"]])
                except OSError:
                    pass
                self._cut(dst)
                self._cut(src)
                self.cut += 1
                if self.die:
                    self.close()
                return
            state["sent"] += len(data)
            try:
                dst.sendall(data)
            except OSError:
                break
        self._close(dst)

    @staticmethod
    def _recv(s: socket.socket) -> bytes:
        try:
            return s.recv(1 << 16)
        except OSError:
            return b""

    @staticmethod
    def _cut(s: socket.socket) -> None:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()

    @staticmethod
    def _close(s: socket.socket) -> None:
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        for s in [self._listener, *self._open]:
            self._cut(s)
