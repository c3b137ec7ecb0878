# The Backend.AI Python kernel runner, embedded in the agent binary and started with
# `python3 -u -I -c <this>`. It keeps one persistent namespace.
#
# Protocol (one JSON object per line):
#   fd 3, agent -> runner: {"op": "exec", "code", "seq"} | {"op": "shell", "cmd", "seq"} |
#                          {"op": "input", "data"} | {"op": "complete", "code", "options"}
#   fd 4, runner -> agent: {"t": "ready"} | {"t": "done", "rc", "seq"} | {"t": "out", "s", "d"} |
#                          {"t": "input", "password"} | {"t": "media", "mime", "data"} |
#                          {"t": "html", "data"} | {"t": "completions", "items"}
# Python-level output (sys.stdout/sys.stderr) travels as "out" frames, in order with the
# other frames. Raw writes to fd 1 and 2 (subprocesses, .buffer) go to pipes that the agent
# drains before handling each frame, so they are not older than the frame that follows them.
import builtins
import json
import os
import signal
import sys

CMD_FD = 3
EVT_FD = 4
_inbuf = b""


def _send(obj):
    data = (json.dumps(obj) + "\n").encode()
    # A frame is never cut by a KeyboardInterrupt.
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(EVT_FD, view):]
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _recv():
    global _inbuf
    while b"\n" not in _inbuf:
        chunk = os.read(CMD_FD, 1 << 16)
        if not chunk:
            os._exit(0)  # the agent went away
        _inbuf += chunk
    line, _, _inbuf = _inbuf.partition(b"\n")
    return json.loads(line)


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def _ask(prompt, password):
    sys.stdout.write(str(prompt))
    _flush()
    _send({"t": "input", "password": password})
    while True:
        msg = _recv()
        if msg.get("op") == "input":
            return msg.get("data", "")


def _input(prompt=""):
    return _ask(prompt, False)


def _getpass(prompt="Password: ", stream=None):
    return _ask(prompt, True)


def emit_media(mime, data):
    """Shows `data` (str, or bytes sent as base64) as a media item of type `mime`."""
    if isinstance(data, (bytes, bytearray)):
        import base64

        data = base64.b64encode(data).decode()
    _flush()
    _send({"t": "media", "mime": str(mime), "data": str(data)})


def emit_html(html):
    """Shows `html` as an html console item."""
    _flush()
    _send({"t": "html", "data": str(html)})


builtins.input = _input
builtins.emit_media = emit_media
builtins.emit_html = emit_html


class _GetpassFinder:
    # getpass is patched when first imported: importing it at start-up costs time.
    def find_spec(self, name, path=None, target=None):
        if name != "getpass":
            return None
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        real_exec = spec.loader.exec_module

        def exec_module(module):
            real_exec(module)
            module.getpass = _getpass

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _GetpassFinder())


class _Output:
    """sys.stdout / sys.stderr: each write is a frame on fd 4, so that stdout, stderr and
    media items stay in the order they were produced. Writes to the raw fds (subprocesses,
    `.buffer`) go to the pipes the agent reads as well."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, name, fd, raw):
        self.name = name
        self._fd = fd
        self.buffer = raw

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError("write() argument must be str, not " + type(s).__name__)
        if s:
            # Lone surrogates cannot travel in JSON to the agent.
            _send({"t": "out", "s": self.name, "d": s.encode("utf-8", "replace").decode("utf-8")})
        return len(s)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        try:
            self.buffer.flush()
        except Exception:
            pass

    def fileno(self):
        return self._fd

    def isatty(self):
        return False

    def writable(self):
        return True

    def readable(self):
        return False

    def seekable(self):
        return False

    @property
    def closed(self):
        return False


# The original wrappers stay referenced: collecting them would close fd 1 and 2.
_original_streams = (sys.stdout, sys.stderr)
sys.stdout = sys.__stdout__ = _Output("stdout", 1, sys.stdout.buffer)
sys.stderr = sys.__stderr__ = _Output("stderr", 2, sys.stderr.buffer)

namespace = {"__name__": "__main__", "__builtins__": builtins}


def _print_exception(skip_frames):
    import traceback

    etype, value, tb = sys.exc_info()
    for _ in range(skip_frames):
        if tb is not None:
            tb = tb.tb_next
    traceback.print_exception(etype, value, tb)


def _run(code):
    import ast

    try:
        tree = ast.parse(code, "<input>", "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Interactive(body=[tree.body.pop()])
        body = compile(tree, "<input>", "exec")
        tail = compile(last, "<input>", "single") if last is not None else None
    except (SyntaxError, ValueError, OverflowError):
        _print_exception(99)
        return 1
    try:
        exec(body, namespace)
        if tail is not None:
            exec(tail, namespace)
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 0
    except BaseException:
        _print_exception(1)
        return 1


def _shell(cmd):
    import subprocess

    try:
        return subprocess.call(cmd, shell=True)
    except KeyboardInterrupt:
        return 130


def _complete(code, options):
    import re
    import rlcompleter

    line = options.get("line") if isinstance(options, dict) else None
    if not isinstance(line, str):
        line = code.splitlines()[-1] if code else ""
    col = options.get("col") if isinstance(options, dict) else None
    if isinstance(col, int) and 0 <= col <= len(line):
        line = line[:col]
    prefix = re.split(r"[^\w.]", line)[-1]
    completer = rlcompleter.Completer(namespace)
    items = []
    for i in range(200):
        try:
            item = completer.complete(prefix, i)
        except Exception:
            break
        if item is None:
            break
        items.append(item)
    return items


def main():
    sys.path.insert(0, os.getcwd())
    _send({"t": "ready"})
    current = None  # the sequence number of the step in progress
    while True:
        try:
            msg = _recv()
            op = msg.get("op")
            if op == "exec" or op == "shell":
                current = msg.get("seq")
                if op == "exec":
                    rc = _run(msg.get("code", ""))
                else:
                    _flush()
                    rc = _shell(msg.get("cmd", ""))
                _flush()
                _send({"t": "done", "rc": rc, "seq": current})
                current = None
            elif op == "complete":
                try:
                    items = _complete(msg.get("code", ""), msg.get("options") or {})
                except Exception:
                    items = []
                _send({"t": "completions", "items": items})
        except KeyboardInterrupt:
            # An interrupt outside user code: end the step if one is in progress (the
            # agent ignores a duplicate), and keep serving.
            _flush()
            if current is not None:
                _send({"t": "done", "rc": 130, "seq": current})
                current = None


main()
