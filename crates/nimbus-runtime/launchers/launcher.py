# Nimbus ActionLoop launcher for Python: `python3 -S -u launcher.py <codedir> <main>`, or in stem
# mode `python3 -S -u launcher.py --stem <codedir>`.
#
# `-S`: the interpreter does not run `site` at start-up. Processing the installation's .pth files
# can cost tens of milliseconds of every cold start (one machine we run on imports a CA bundle
# from a .pth hook: 27 ms of a 40 ms start). The launcher puts the interpreter's site-packages
# directories on sys.path itself, without executing .pth hooks; a bundled virtualenv still gets
# full `site.addsitedir` treatment.
#
# Protocol (see nimbus-runtime's process.rs): load __main__.py, then write {"ok":true} (or
# {"ok":false,"error":...} and exit 1) on fd 3. Then, for each JSON line on stdin, call the
# entry point and write exactly one JSON line on fd 3, after flushing stdout and stderr: the
# runtime relies on that ordering to collect logs without sentinel lines.
#
# Stem mode (a pre-started runtime): with this module's imports done and no code yet, write
# {"ok":true,"stem":true} on fd 3, then read ONE line on stdin,
# {"init":{"main":"...","action_name":"...","env":{...}}}: apply `env` to os.environ, load the
# code that has meanwhile been put into <codedir>, and answer exactly as above. This module must
# stay cheap to import (asyncio, for one, is imported only when a coroutine has to be run).

import importlib.util
import json
import os
import site
import sys
import types

for _dir in site.getsitepackages():
    if os.path.isdir(_dir) and _dir not in sys.path:
        sys.path.append(_dir)


class LoadError(Exception):
    pass


def send(out, obj):
    try:
        line = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        print(f"The action result could not be serialized to JSON: {e}", file=sys.stderr)
        line = "null"
    sys.stdout.flush()
    sys.stderr.flush()
    out.write((line + "\n").encode("utf-8"))
    out.flush()


def add_virtualenv(codedir):
    """Puts a bundled virtualenv's site-packages right after the code dir on sys.path."""
    venv = os.path.join(codedir, "virtualenv")
    if not os.path.isdir(venv):
        return
    import glob  # only here: it pulls in `re` (~10 ms of every start otherwise)

    for sp in sorted(glob.glob(os.path.join(venv, "lib", "python*", "site-packages"))):
        before = list(sys.path)
        site.addsitedir(sp)  # also runs its .pth files
        added = [p for p in sys.path if p not in before]
        for p in added:
            sys.path.remove(p)
        sys.path[1:1] = added


def load(codedir, main_name):
    sys.path.insert(0, codedir)
    add_virtualenv(codedir)
    path = os.path.join(codedir, "__main__.py")
    if not os.path.isfile(path):
        raise LoadError("Zip file does not include mandatory file __main__.py")
    # Not named __main__: an `if __name__ == "__main__":` block must not run at load time.
    spec = importlib.util.spec_from_file_location("main__", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    fn = getattr(module, main_name, None)
    if not callable(fn):
        raise LoadError(f"main function '{main_name}' not found")
    return fn


def describe(e):
    if isinstance(e, LoadError):
        return str(e)
    if isinstance(e, SyntaxError):
        where = f" ({os.path.basename(e.filename or '')}, line {e.lineno})" if e.lineno else ""
        return f"{type(e).__name__}: {e.msg}{where}"
    return f"{type(e).__name__}: {e}"


def await_init(out, requests):
    """Stem mode: reads the init line and applies it; returns the entry point's name."""
    while True:
        line = requests.readline()
        if not line:
            sys.exit(0)  # stdin closed: the runtime gave up on this stem cell
        if line.strip():
            break
    try:
        init = json.loads(line)["init"]
        if not isinstance(init, dict):
            raise ValueError('no "init" object')
    except (ValueError, KeyError, TypeError) as e:
        print(f"Invalid init line: {e!r}", file=sys.stderr)
        send(out, {"ok": False, "error": "The runtime sent an invalid init line."})
        sys.exit(1)
    env = init.get("env")
    for k, v in (env if isinstance(env, dict) else {}).items():
        os.environ[k] = v if isinstance(v, str) else json.dumps(v)
    main_name = init.get("main")
    return main_name if isinstance(main_name, str) and main_name else "main"


def main():
    stem = len(sys.argv) > 1 and sys.argv[1] == "--stem"
    args = sys.argv[2:] if stem else sys.argv[1:]
    codedir = os.path.abspath(args[0] if args else ".")
    main_name = args[1] if len(args) > 1 else "main"

    out = os.fdopen(3, "wb")
    os.set_inheritable(3, False)  # subprocesses of the function must not hold the result pipe
    # Requests come on a private copy of stdin; the function's own stdin is /dev/null, so code
    # that reads stdin cannot swallow the next request.
    requests = os.fdopen(os.dup(0), "rb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)

    if stem:
        send(out, {"ok": True, "stem": True})
        main_name = await_init(out, requests)
        # The code dir was filled after start-up: no import cache may predate it.
        importlib.invalidate_caches()

    try:
        fn = load(codedir, main_name)
    except BaseException as e:  # noqa: B036 - anything the module does at import time
        import traceback

        traceback.print_exc()
        send(out, {"ok": False, "error": describe(e)})
        sys.exit(1)
    send(out, {"ok": True})

    previous = set()
    while True:
        line = requests.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        try:
            msg = json.loads(line)
        except ValueError as e:
            print(f"Invalid request line: {e}", file=sys.stderr)
            send(out, {"error": "The runtime sent an invalid request."})
            continue
        keys = set()
        for k, v in msg.items():
            if k == "value":
                continue
            name = "__OW_" + k.upper()
            os.environ[name] = v if isinstance(v, str) else json.dumps(v)
            keys.add(name)
        for k in previous - keys:
            os.environ.pop(k, None)
        previous = keys

        try:
            res = fn(msg.get("value", {}))
            if isinstance(res, types.CoroutineType):
                # Imported only here: asyncio alone costs ~50 ms of every cold start.
                import asyncio

                res = asyncio.run(res)
        except Exception as e:
            import traceback

            traceback.print_exc()
            res = {"error": str(e)}
        send(out, res)


if __name__ == "__main__":
    main()
