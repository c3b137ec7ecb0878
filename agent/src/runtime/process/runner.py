# The Backend.AI Python kernel runner, embedded in the agent binary and started with
# `python3 -u -I -c <this>`. It keeps one persistent namespace.
#
# Protocol: frames of `<kind> <payload length>\n<payload bytes>` (UTF-8), chosen over JSON
# because importing json costs more than the rest of the start-up.
#   fd 3, agent -> runner:  exec "<seq>\n<code>" | shell "<seq>\n<cmd>" | input "<line>" |
#                           complete "<col or -1>\n<line>\n<code>"
#   fd 4, runner -> agent:  ready "" | start "<seq>" (user code runs from here: the agent holds
#                           an interrupt asked for before it) | done "<seq> <rc>" |
#                           out1 / out2 "<stdout / stderr text>" |
#                           input "0" / "1" (password) | media "<mime>\n<data>" |
#                           html "<text>" | completions "<item>\n<item>..."
# Python-level output (sys.stdout/sys.stderr) travels as out frames, in order with the other
# frames. Raw writes to fd 1 and 2 (subprocesses, .buffer) go to pipes that the agent drains
# before handling each frame, so they are not older than the frame that follows them.
import _signal
import builtins
import os
import sys

CMD_FD = 3
EVT_FD = 4
_inbuf = b""


def _send(kind, payload=""):
    body = payload.encode("utf-8", "replace")
    data = b"%s %d\n%s" % (kind.encode(), len(body), body)
    # A frame is never cut by a KeyboardInterrupt.
    old = _signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGINT})
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(EVT_FD, view):]
    finally:
        _signal.pthread_sigmask(_signal.SIG_SETMASK, old)


def _fill(predicate):
    global _inbuf
    while not predicate():
        chunk = os.read(CMD_FD, 1 << 16)
        if not chunk:
            os._exit(0)  # the agent went away
        _inbuf += chunk


def _recv():
    """The next command: (op, payload)."""
    global _inbuf
    _fill(lambda: b"\n" in _inbuf)
    end = _inbuf.index(b"\n")
    op, _, size = _inbuf[:end].decode().partition(" ")
    size = int(size)
    start = end + 1
    _fill(lambda: len(_inbuf) >= start + size)
    payload = _inbuf[start : start + size].decode("utf-8", "replace")
    _inbuf = _inbuf[start + size :]
    return op, payload


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def _ask(prompt, password):
    sys.stdout.write(str(prompt))
    _flush()
    _send("input", "1" if password else "0")
    while True:
        op, payload = _recv()
        if op == "input":
            return payload


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
    _send("media", str(mime).replace("\n", " ") + "\n" + str(data))


def emit_html(html):
    """Shows `html` as an html console item."""
    _flush()
    _send("html", str(html))


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
        self._kind = "out1" if fd == 1 else "out2"
        self._fd = fd
        self.buffer = raw

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError("write() argument must be str, not " + type(s).__name__)
        if s:
            _send(self._kind, s)
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


def _run(seq, code):
    # The ast module is not imported: compile() builds the tree with the builtin _ast types.
    import _ast

    try:
        tree = compile(code, "<input>", "exec", _ast.PyCF_ONLY_AST)
        last = None
        if tree.body and type(tree.body[-1]) is _ast.Expr:
            last = _ast.Interactive(body=[tree.body.pop()])
        body = compile(tree, "<input>", "exec")
        tail = compile(last, "<input>", "single") if last is not None else None
    except (SyntaxError, ValueError, OverflowError):
        _print_exception(99)
        return 1
    try:
        _send("start", seq)
        exec(body, namespace)
        if tail is not None:
            exec(tail, namespace)
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 0
    except BaseException:
        _print_exception(1)
        return 1


def _shell(seq, cmd):
    import subprocess

    try:
        _send("start", seq)
        return subprocess.call(cmd, shell=True)
    except KeyboardInterrupt:
        return 130


def _complete(col, line, code):
    import re
    import rlcompleter

    if not line:
        line = code.splitlines()[-1] if code else ""
    if 0 <= col <= len(line):
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
    _send("ready")
    current = None  # the sequence number of the step in progress
    while True:
        try:
            op, payload = _recv()
            if op == "exec" or op == "shell":
                seq, _, text = payload.partition("\n")
                current = seq
                if op == "exec":
                    rc = _run(seq, text)
                else:
                    _flush()
                    rc = _shell(seq, text)
                _flush()
                _send("done", "%s %d" % (current, rc))
                current = None
            elif op == "complete":
                col, _, rest = payload.partition("\n")
                line, _, code = rest.partition("\n")
                try:
                    items = _complete(int(col), line, code)
                except Exception:
                    items = []
                _send("completions", "\n".join(items))
        except KeyboardInterrupt:
            # An interrupt outside user code: end the step if one is in progress (the
            # agent ignores a duplicate), and keep serving.
            _flush()
            if current is not None:
                _send("done", "%s 130" % current)
                current = None


main()
