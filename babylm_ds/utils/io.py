"""Atomic, checksummed writes: nothing good is overwritten by a half-written file."""
import contextlib
import fcntl
import hashlib
import json
import os
import socket
import tempfile

_locks = {}  # path -> fd of the locks this process holds


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temp path beside `path`; rename it into place only if the block succeeds (with the
    permissions a plain open() would give, not mkstemp's 0600)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path),
                               dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path, data):
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_json(path, obj):
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def sha256_file(path, chunk=1 << 20, visit=None):
    """Hex sha256 of a file, read in `chunk`-byte blocks; `visit(block)` sees each block (progress, scans)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
            if visit:
                visit(block)
    return h.hexdigest()


def read_json(path, fix):
    """JSON of `path`; a missing or malformed file is a ValueError naming the file and `fix`."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path} not found; {fix}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); {fix}") from None


def check_schema(obj, schema, where, fix):
    """Raise ValueError naming `where`, the first key of `obj` that does not fit `schema`, and `fix`.

    A schema is a type, {key: schema} (key `str`: every key of a mapping), or [schema] (every item)."""
    def walk(value, spec, key):
        if isinstance(spec, dict):
            if not isinstance(value, dict):
                raise ValueError(f"{where}: {key or 'top level'} should be an object; {fix}")
            for k, sub in spec.items():
                items = value.items() if k is str else [(k, value[k])] if k in value else None
                if items is None:
                    raise ValueError(f"{where}: missing key {key + '.' if key else ''}{k}; {fix}")
                for name, v in items:
                    walk(v, sub, f"{key}.{name}" if key else str(name))
        elif isinstance(spec, list):
            if not isinstance(value, list):
                raise ValueError(f"{where}: {key} should be a list; {fix}")
            for i, v in enumerate(value):
                walk(v, spec[0], f"{key}[{i}]")
        elif not isinstance(value, spec) or (spec is int and isinstance(value, bool)):
            raise ValueError(f"{where}: {key} should be {spec.__name__}, got {value!r}; {fix}")
    walk(obj, schema, "")
    return obj


def lock_dir(path):
    """Hold `path`/.lock (flock, owner pid and host written in it) until this process exits.

    A second process is refused with a ValueError naming the owner. A lock whose owner died is
    free again: the kernel drops an flock with its process, so a stale file never blocks. Since no
    other process writes under a held lock, the temp files of atomic writes that a killed owner left
    (`.tmp-*`, anywhere below `path`) are deleted."""
    path = os.path.abspath(path)
    if path in _locks:
        return
    os.makedirs(path, exist_ok=True)
    lock = os.path.join(path, ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ValueError(f"{path} is in use by another run (owner: pid {owner}, lock {lock}); "
                         "wait for it to finish, stop it, or choose another --out") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    _locks[path] = fd
    for root, _, files in os.walk(path):
        for name in files:
            if name.startswith(".tmp-"):
                os.unlink(os.path.join(root, name))
