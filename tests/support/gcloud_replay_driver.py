"""Run many gcloud commands in one gcloud process, to check their arguments quickly.

Started by tests/support/gcloud_replay.py with gcloud's own Python interpreter, as a
script (it imports nothing of the tests):

    PYTHON -S tests/support/gcloud_replay_driver.py SDK_ROOT COMMANDS.jsonl RESULTS.jsonl

Each line of COMMANDS.jsonl is one argv (without the leading "gcloud"). The gcloud CLI tree is
loaded once and each command goes through the same ``Execute`` path as ``gcloud ARGS`` from a
shell; starting the real executable once per command costs about 0.8 s of CPU, this about
0.05 s. Each result line holds the exit code and what the command wrote to stdout and stderr
(captured at the file-descriptor level, because gcloud's log handlers hold the original
streams). With an empty CLOUDSDK_CONFIG a well-formed command ends at "no active account"
(exit 1) and a malformed one in the argument parser (exit 2).
"""

import json
import os
import sys
import tempfile


def main() -> int:
    sdk_root, commands_path, results_path = sys.argv[1:4]
    lib = os.path.join(sdk_root, "lib")
    sys.path[:0] = [lib, os.path.join(lib, "third_party")]
    from googlecloudsdk import gcloud_main  # type: ignore[import-not-found]

    cli = gcloud_main.CreateCLI([])
    with open(commands_path) as commands, open(results_path, "w") as results:
        for line in commands:
            argv = json.loads(line)
            code, output = run(cli, argv)
            results.write(json.dumps({"argv": argv, "exit": code, "output": output}) + "\n")
            results.flush()
    return 0


def run(cli: object, argv: list[str]) -> tuple[int, str]:
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as capture, open(os.devnull) as devnull:
        saved_stdin = os.dup(0)
        os.dup2(devnull.fileno(), 0)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(capture.fileno(), 1)
        os.dup2(capture.fileno(), 2)
        try:
            cli.Execute(argv)  # type: ignore[attr-defined]
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        except BaseException as error:  # reported as a failed replay, not raised
            print(f"replay driver: {type(error).__name__}: {error}", file=sys.stderr)
            code = 99
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.dup2(saved_stdin, 0)
            for fd in (*saved, saved_stdin):
                os.close(fd)
        capture.seek(0)
        return code, capture.read().decode(errors="replace")


if __name__ == "__main__":
    sys.exit(main())
