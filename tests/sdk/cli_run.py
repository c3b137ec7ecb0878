"""Runs the official SDK's CLI (`backend.ai run ...`) as a user would: python3
and bash snippets, input() answered on stdin, and a loop needing continuation.
Prints "OK cli_run" at the end."""
import os
import subprocess
import sys

cli = os.path.join(os.path.dirname(sys.executable), 'backend.ai')


def run(args, stdin=''):
    done = subprocess.run([cli, 'run', *args], input=stdin, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or 'Execution failed' in done.stdout + done.stderr:
        sys.exit(f'FAILED: backend.ai run {args}:\n{done.stdout}\n{done.stderr}')
    return done.stdout


output = run(['python3', '-c', 'print("hello", 6 * 7)'])
assert 'hello 42' in output, output
output = run(['python3', '-c', 'name = input("name? ")\nprint("got", name)'], stdin='world\n')
assert 'got world' in output, output
output = run(['python3', '-c', 'import time\nfor i in range(5):\n    print("tick", i, flush=True)\n    time.sleep(0.8)'])
assert all(f'tick {i}' in output for i in range(5)), output
output = run(['bash', '-c', 'echo "from bash $((20 + 22))"'])
assert 'from bash 42' in output, output
# A shell loop longer than one call: the CLI continues the run until it ends.
output = run(['bash', '-c', 'for i in 0 1 2 3 4; do echo "beat $i"; sleep 0.8; done'])
assert all(f'beat {i}' in output for i in range(5)), output
output = run(['sh', '-c', 'echo "$(whoami 2>/dev/null || id -u) in $(pwd)"'])
assert 'root' not in output, f'kernels must not run as root: {output}'
print('OK cli_run')
