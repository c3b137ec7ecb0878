"""Drives the kernel session API with the official SDK's Python API
(backend.ai-client 1.0.6): get_or_create, execute (query, batch, input,
continuation), restart, interrupt, complete, upload, get_info and destroy.

Reads BACKEND_ENDPOINT, BACKEND_ACCESS_KEY and BACKEND_SECRET_KEY. Exits non-zero
on the first mismatch; prints "OK kernel_api" at the end.
"""
import os
import secrets
import sys
import tempfile
import threading
import time

from ai.backend.client.exceptions import BackendAPIError
from ai.backend.client.kernel import Kernel


def run(kernel, code, mode='query', opts=None, inputs=()):
    """Runs code to the end like the SDK's CLI does; returns (statuses, console)."""
    run_id = secrets.token_hex(8)
    inputs = list(inputs)
    statuses, console = [], []
    for _ in range(200):
        result = kernel.execute(run_id, code, mode=mode, opts=opts)
        statuses.append(result['status'])
        console.extend(result['console'])
        if result['status'] in ('finished', 'exec-timeout'):
            return statuses, console
        if result['status'] == 'waiting-input':
            statuses.append(('is_password', bool(result['options'].get('is_password'))))
            code = inputs.pop(0)
        else:
            code = ''
    sys.exit(f'run did not finish: {statuses}')


def out(console, kind='stdout'):
    return ''.join(data for t, data in console if t == kind)


def expect(condition, what):
    if not condition:
        sys.exit(f'FAILED: {what}')


token = 'sdk-' + secrets.token_hex(8)
kernel = Kernel.get_or_create('python3', client_token=token)
expect(kernel.kernel_id == token, f'kernelId is the token: {kernel.kernel_id}')
again = Kernel.get_or_create('python', client_token=token)
expect(again.kernel_id == token, 'get-or-create returns the same session')

# Query mode keeps one namespace.
statuses, console = run(kernel, 'x = 41\nprint(x + 1)')
expect(statuses == ['finished'] and out(console) == '42\n', f'query: {statuses} {console}')
statuses, console = run(kernel, 'print(x)')
expect(out(console) == '41\n', f'persistent namespace: {console}')
statuses, console = run(kernel, 'import sys\nprint("oops", file=sys.stderr)')
expect(out(console, 'stderr') == 'oops\n', f'stderr: {console}')

# input() and getpass.
statuses, console = run(kernel, 'name = input("who? ")\nprint("hi", name)', inputs=['bob'])
expect(('is_password', False) in statuses and 'hi bob' in out(console), f'input: {statuses} {console}')
statuses, console = run(kernel, 'import getpass\np = getpass.getpass()\nprint(len(p))', inputs=['s3cret'])
expect(('is_password', True) in statuses and '6' in out(console), f'getpass: {statuses} {console}')

# A long loop needs continuation; every line arrives once, in order.
code = 'import time\nfor i in range(8):\n    print(i, flush=True)\n    time.sleep(0.5)'
statuses, console = run(kernel, code)
expect('continued' in statuses and statuses[-1] == 'finished', f'continuation: {statuses}')
expect(out(console) == ''.join(f'{i}\n' for i in range(8)), f'continued output: {console}')

# Interrupt a long sleep; the kernel survives.
run_id = secrets.token_hex(8)
result = kernel.execute(run_id, 'import time\ntime.sleep(60)')
expect(result['status'] == 'continued', f'sleep continues: {result}')
kernel.interrupt()
console = []
for _ in range(20):
    result = kernel.execute(run_id, '')
    console.extend(result['console'])
    if result['status'] == 'finished':
        break
expect(result['status'] == 'finished' and 'KeyboardInterrupt' in out(console, 'stderr'), f'interrupt: {result} {console}')
statuses, console = run(kernel, 'print(x)')
expect(out(console) == '41\n', 'the kernel survives an interrupt')

# Completion.
response = kernel.complete('pri', {'row': 0, 'col': 3, 'line': 'pri', 'post': ''})
completions = response['result']['completions']
expect(any(c.startswith('print') for c in completions), f'completions: {response}')
result = kernel.execute(secrets.token_hex(8), 'x', mode='complete', opts={'row': 0, 'col': 1, 'line': 'x'})
expect('x' in result['completions'], f'complete mode: {result}')

# Upload, then batch mode builds and runs the uploaded program.
workdir = tempfile.mkdtemp()
os.chdir(workdir)
os.makedirs('pkg')
with open('pkg/data.txt', 'w') as f:
    f.write('uploaded!')
with open('main.py', 'w') as f:
    f.write('print(open("pkg/data.txt").read())\n')
response = kernel.upload(['pkg/data.txt', 'main.py'])
expect(response.status // 100 == 2, f'upload: {response.status}')
statuses, console = run(kernel, 'print(open("pkg/data.txt").read())')
expect(out(console) == 'uploaded!\n', f'uploaded file: {console}')
statuses, console = run(kernel, '', mode='batch', opts={'build': 'echo building', 'exec': 'python3 main.py'})
expect('build-finished' in statuses and statuses[-1] == 'finished', f'batch: {statuses}')
expect('building' in out(console) and 'uploaded!' in out(console), f'batch output: {console}')

# Info counts the queries.
info = kernel.get_info()
expect(info['lang'].startswith('python3') and info['numQueriesExecuted'] >= 8, f'info: {info}')
expect(info['memoryLimit'] > 0, f'memory limit: {info}')

# Restart: a fresh interpreter.
kernel.restart()
statuses, console = run(kernel, 'print(x)')
expect('NameError' in out(console, 'stderr'), f'restart gives a fresh namespace: {console}')

# The shell kernel.
shell = Kernel.get_or_create('sh', client_token='sdk-sh-' + secrets.token_hex(4))
statuses, console = run(shell, 'A=3\necho $((A + 4))')
expect(out(console) == '7\n', f'bash: {console}')
statuses, console = run(shell, 'echo $A')
expect(out(console) == '3\n', f'persistent bash: {console}')
shell.destroy()

# Destroy returns the final stats; the session is gone afterwards.
stats = kernel.destroy()
expect('stats' in stats and isinstance(stats['stats'], dict), f'destroy: {stats}')
try:
    kernel.get_info()
    sys.exit('FAILED: info after destroy')
except BackendAPIError as e:
    expect(e.args[0] == 404, f'404 after destroy: {e}')
print('OK kernel_api')
