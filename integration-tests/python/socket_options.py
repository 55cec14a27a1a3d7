"""Report TCP_NODELAY and SO_KEEPALIVE on another process's sockets, read from a duplicate of each socket
(pidfd_getfd, Linux 5.6+; needs ptrace rights over the process: its owner, or root).

Usage: socket_options.py PID PORT
Prints one JSON line {"peer": "ip:port", "nodelay": bool, "keepalive": bool} per connected TCP socket of PID
whose local port is PORT (the connections a listener on PORT accepted).
"""
import ctypes
import json
import os
import socket
import sys

SYS_PIDFD_GETFD = 438  # the same number on every Linux architecture


def main() -> int:
    pid, port = int(sys.argv[1]), int(sys.argv[2])
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                continue
        except OSError:
            continue  # closed meanwhile
        fd = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(name), 0)
        if fd < 0:
            err = ctypes.get_errno()
            if err == 9:  # EBADF: closed meanwhile
                continue
            raise OSError(err, os.strerror(err))
        s = socket.socket(fileno=fd)
        try:
            if s.family not in (socket.AF_INET, socket.AF_INET6) or s.type != socket.SOCK_STREAM:
                continue
            if s.getsockname()[1] != port:
                continue
            try:
                peer = s.getpeername()
            except OSError:
                continue  # the listening socket itself
            nodelay = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            keepalive = s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0
            print(json.dumps({"peer": f"{peer[0]}:{peer[1]}", "nodelay": nodelay,
                              "keepalive": keepalive}), flush=True)
        finally:
            s.detach()
            os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
