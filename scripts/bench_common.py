"""What the benchmark drivers share: the benchmark key, signing with the official
SDK's signer, percentiles, memory readings, and the results file the shell script
turns into one table per deployment."""
import json
import os
import re
import statistics
from datetime import datetime

from ai.backend.client.auth import generate_signature
from dateutil.tz import tzutc

ACCESS_KEY = 'AKIABENCHMARK0000001'
SECRET_KEY = 'bench-secret-key-not-for-production-use0'
VERSION = 'v2.20170315'


def signed_headers(endpoint, method, path, content, content_type='application/json', date=None, version=VERSION):
    date = date or datetime.now(tzutc())
    headers, _ = generate_signature(method, version, endpoint, date, path, content_type, content,
                                    ACCESS_KEY, SECRET_KEY, 'sha256')
    headers.update({'Date': date.isoformat(), 'X-BackendAI-Version': version})
    if content_type:
        headers['Content-Type'] = content_type
    return headers


def percentiles(samples):
    samples = sorted(samples)
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def rss_kib(pid):
    with open(f'/proc/{pid}/status') as f:
        return int(re.search(r'VmRSS:\s+(\d+)', f.read()).group(1))


def pss_kib(pid):
    """Proportional set size: shared pages split between their users."""
    try:
        with open(f'/proc/{pid}/smaps_rollup') as f:
            return int(re.search(r'Pss:\s+(\d+)', f.read()).group(1))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0


def descendants(pid):
    """Every process below `pid`."""
    children = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open(f'/proc/{entry}/stat') as f:
                    ppid = int(f.read().rsplit(')', 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def fds(pid):
    return len(os.listdir(f'/proc/{pid}/fd'))


def record(name, value):
    """One row of this deployment's table (BENCH_RESULTS names the file)."""
    path = os.environ.get('BENCH_RESULTS')
    if path:
        with open(path, 'a') as f:
            f.write(json.dumps({'deployment': os.environ.get('BENCH_DEPLOYMENT', ''), 'name': name,
                                'value': str(value)}) + '\n')
