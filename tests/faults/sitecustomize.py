"""Fault injection for the subprocess tests (tests/test_faults.py): with this folder on PYTHONPATH,
Python imports this module at start-up, and ``NORMBENCH_FAULT=erofs:DIR`` makes every write under DIR
fail as on a read-only file system (errno EROFS), ``enospc:DIR`` as on a full disk (ENOSPC). Reads
work as usual. As root, file modes cannot make a folder read-only; this can."""

from __future__ import annotations

import builtins
import errno
import io
import os

_fault = os.environ.get("NORMBENCH_FAULT", "")
if _fault:
    _kind, _, _root = _fault.partition(":")
    _code = {"erofs": errno.EROFS, "enospc": errno.ENOSPC}[_kind]
    _root = os.path.realpath(_root)

    def _under(path) -> bool:
        try:
            real = os.path.realpath(os.fspath(path))
        except TypeError:  # a file descriptor
            return False
        return real == _root or real.startswith(_root + os.sep)

    def _fail(path):
        raise OSError(_code, os.strerror(_code), os.fspath(path))

    _open, _os_open, _mkdir = builtins.open, os.open, os.mkdir
    _replace, _rename, _unlink = os.replace, os.rename, os.unlink

    def open_(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and _under(file):
            _fail(file)
        return _open(file, mode, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and _under(path):
            _fail(path)
        return _os_open(path, flags, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        if _under(path):
            if os.path.isdir(path):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(path))
            _fail(path)
        return _mkdir(path, *args, **kwargs)

    def guarded(real):
        def call(src, *args, **kwargs):
            if _under(src) or (args and _under(args[0])):
                _fail(src)
            return real(src, *args, **kwargs)

        return call

    builtins.open = io.open = open_
    os.open, os.mkdir = os_open, mkdir
    os.replace, os.rename, os.unlink = guarded(_replace), guarded(_rename), guarded(_unlink)
