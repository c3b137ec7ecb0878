"""Runs the official SDK's admin commands (backend.ai-client 1.0.6, unmodified)
as a user would: `backend.ai ps`, `backend.ai admin sessions` (with --status and,
for admin keys, --access-key) and `backend.ai admin vfolders`, with one live
session of the key. The caller has made a vfolder named "sdk-folder" for the key.
Prints "OK admin_cli" at the end."""
import os
import secrets
import subprocess
import sys

from ai.backend.client.admin import Admin
from ai.backend.client.kernel import Kernel

cli = os.path.join(os.path.dirname(sys.executable), 'backend.ai')
access_key = os.environ['BACKEND_ACCESS_KEY']


def run(*args):
    done = subprocess.run([cli, *args], capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    if done.returncode != 0 or 'Failed to query the gateway' in output or 'Traceback' in output:
        sys.exit(f'FAILED: backend.ai {" ".join(args)}:\n{output}')
    return done.stdout


def fails(*args):
    done = subprocess.run([cli, *args], capture_output=True, text=True, timeout=60)
    return 'Failed to query the gateway' in done.stdout + done.stderr


is_admin = Admin.query('query { keypair { is_admin } }')['keypair']['is_admin']

output = run('ps')
assert 'There is no compute sessions currently running.' in output, output

token = 'sdk-admin-' + secrets.token_hex(4)
kernel = Kernel.get_or_create('python3', client_token=token)
try:
    sessions = Admin.query('query { compute_sessions { id sess_id status } }')['compute_sessions']
    mine = [s for s in sessions if s['sess_id'] == token]
    assert len(mine) == 1 and mine[0]['status'] == 'RUNNING', sessions
    kernel_id = mine[0]['id']

    for args in [('ps',), ('admin', 'sessions'), ('admin', 'sessions', '--status', 'RUNNING')]:
        output = run(*args)
        assert 'Session ID' in output and 'Lang/runtime' in output, output
        row = [line for line in output.splitlines() if kernel_id in line]
        assert len(row) == 1 and 'python3' in row[0] and 'RUNNING' in row[0], output

    output = run('admin', 'sessions', '--status', 'TERMINATED')
    assert kernel_id not in output, output
    output = run('admin', 'sessions', '--status', 'ALL')
    assert kernel_id in output, output

    output = run('admin', 'vfolders')
    assert 'sdk-folder' in output and 'Max Files' in output, output

    if is_admin:
        output = run('admin', 'sessions', '--access-key', access_key)
        assert kernel_id in output, output
        output = run('admin', 'vfolders', '--access-key', access_key)
        assert 'sdk-folder' in output, output
    else:
        # Only super-admins may name an access key: an error, never the data.
        assert fails('admin', 'sessions', '--access-key', 'AKIAIOSFODNN7EXAMPLE')
finally:
    kernel.destroy()

output = run('ps')
assert kernel_id not in output, output
print('OK admin_cli')
