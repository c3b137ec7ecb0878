"""Driver of scripts/bench_manager.sh, at scale: executes from 8 clients on 8
sessions at once, many live python3 sessions on one agent, and 1,000 creates and
destroys in a row checked for leaks."""
import argparse
import json
import multiprocessing
import os
import secrets
import time

import requests

from bench_common import descendants, fds, percentiles, pss_kib, record, rss_kib, signed_headers

parser = argparse.ArgumentParser()
parser.add_argument('--endpoint', required=True)
parser.add_argument('--manager-pid', type=int, required=True)
parser.add_argument('--agent-pid', type=int, required=True)
parser.add_argument('--scratch-root', required=True)
args = parser.parse_args()
PARTS = set(os.environ.get('BENCH_PARTS', 'parallel,many,churn').split(','))
CLIENTS = int(os.environ.get('BENCH_CLIENTS', 8))
SECONDS = int(os.environ.get('BENCH_SECONDS', 10))
MANY = int(os.environ.get('BENCH_MANY', 300))
CHURN = int(os.environ.get('BENCH_CHURN', 1000))


def call(http, method, path, body=None):
    content = json.dumps(body).encode() if body is not None else b''
    response = http.request(method, f'{args.endpoint}/v2/{path}', data=content,
                            headers=signed_headers(args.endpoint, method, path, content))
    if response.status_code // 100 != 2:
        raise SystemExit(f'{method} {path}: {response.status_code} {response.text}')
    return response.json() if response.content else None


def executor(token):
    """One client on its own session: print(1) as fast as it answers, for SECONDS."""
    http = requests.Session()
    samples = []
    deadline = time.perf_counter() + SECONDS
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        result = call(http, 'POST', f'kernel/{token}', {'mode': 'query', 'code': 'print(1)',
                                                         'runId': secrets.token_hex(8)})
        samples.append((time.perf_counter() - started) * 1000)
        assert result['result']['console'] == [['stdout', '1\n']], result
    return samples


def parallel_bench():
    http = requests.Session()
    tokens = [f'bench-par-{i}-{secrets.token_hex(3)}' for i in range(CLIENTS)]
    for t in tokens:
        call(http, 'POST', 'kernel/create', {'lang': 'python3', 'clientSessionToken': t})
    with multiprocessing.Pool(CLIENTS) as pool:
        pool.map(executor, tokens)  # warm-up
        started = time.perf_counter()
        runs = pool.map(executor, tokens)
        elapsed = time.perf_counter() - started
    samples = [s for run in runs for s in run]
    p50, p99 = percentiles(samples)
    rate = len(samples) / elapsed
    print(f'execute print(1) from {CLIENTS} clients on {CLIENTS} sessions at once, {SECONDS} s: '
          f'{rate:.0f} executes/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms')
    record(f'execute print(1), {CLIENTS} clients x {CLIENTS} sessions (executes/s)', f'{rate:.0f}')
    record('  p50 / p99 (ms)', f'{p50:.2f} / {p99:.2f}')
    for t in tokens:
        call(http, 'DELETE', f'kernel/{t}')


def kernels_memory():
    """PSS of every process below the agent (its kernels), and the agent's own."""
    return sum(pss_kib(pid) for pid in descendants(args.agent_pid)), pss_kib(args.agent_pid)


def many_bench():
    http = requests.Session()
    time.sleep(1)
    kernels0, agent0 = kernels_memory()
    manager0 = rss_kib(args.manager_pid)
    tokens = [f'bench-many-{i:04d}-{secrets.token_hex(2)}' for i in range(MANY)]
    create_ms = []
    for t in tokens:
        started = time.perf_counter()
        call(http, 'POST', 'kernel/create', {'lang': 'python3', 'clientSessionToken': t})
        create_ms.append((time.perf_counter() - started) * 1000)
    # Every session answers.
    for t in tokens:
        result = call(http, 'POST', f'kernel/{t}', {'mode': 'query', 'code': 'print(1)', 'runId': secrets.token_hex(8)})
        assert result['result']['console'] == [['stdout', '1\n']], result
    time.sleep(2)
    kernels1, agent1 = kernels_memory()
    manager1 = rss_kib(args.manager_pid)
    per_kernel = (kernels1 - kernels0) / MANY
    per_agent = (agent1 - agent0) / MANY
    last10 = sum(create_ms[-10:]) / 10
    print(f'{MANY} live python3 sessions on one agent: kernels {per_kernel:.0f} KiB PSS each, agent '
          f'{per_agent:.1f} KiB each, manager {(manager1 - manager0) / MANY:.1f} KiB RSS each; create of the '
          f'last one {create_ms[-1]:.1f} ms (mean of the last 10: {last10:.1f} ms, of the first 10: '
          f'{sum(create_ms[:10]) / 10:.1f} ms)')
    record(f'{MANY} live python3 sessions: kernel PSS per session (KiB)', f'{per_kernel:.0f}')
    record('  agent memory per session (KiB)', f'{per_agent:.1f}')
    record(f'  create time of the {MANY}th (ms)', f'{create_ms[-1]:.1f}')
    for t in tokens:
        call(http, 'DELETE', f'kernel/{t}')


def scratch_dirs():
    try:
        return len(os.listdir(args.scratch_root))
    except FileNotFoundError:
        return 0


def churn_bench():
    http = requests.Session()

    def snapshot():
        return {'manager fds': fds(args.manager_pid), 'agent fds': fds(args.agent_pid),
                'manager RSS KiB': rss_kib(args.manager_pid), 'agent RSS KiB': rss_kib(args.agent_pid),
                'processes below the agent': len(descendants(args.agent_pid)), 'scratch dirs': scratch_dirs()}

    def cycle(i):
        t = f'bench-churn-{i:05d}-{secrets.token_hex(2)}'
        call(http, 'POST', 'kernel/create', {'lang': 'python3', 'clientSessionToken': t})
        call(http, 'DELETE', f'kernel/{t}')

    for i in range(20):
        cycle(i)
    time.sleep(2)
    before = snapshot()
    started = time.perf_counter()
    for i in range(CHURN):
        cycle(i)
    elapsed = time.perf_counter() - started
    time.sleep(3)
    after = snapshot()
    print(f'{CHURN} python3 creates and destroys in a row: {elapsed:.1f} s '
          f'({elapsed * 1000 / CHURN:.1f} ms per pair)')
    for name in before:
        print(f'  {name}: {before[name]} -> {after[name]}')
    record(f'{CHURN} creates + destroys in a row (ms per pair)', f'{elapsed * 1000 / CHURN:.1f}')
    record('  fds (manager, agent) before -> after',
           f"{before['manager fds']},{before['agent fds']} -> {after['manager fds']},{after['agent fds']}")
    record('  RSS KiB (manager, agent) before -> after',
           f"{before['manager RSS KiB']},{before['agent RSS KiB']} -> {after['manager RSS KiB']},{after['agent RSS KiB']}")
    record('  processes, scratch dirs before -> after',
           f"{before['processes below the agent']},{before['scratch dirs']} -> "
           f"{after['processes below the agent']},{after['scratch dirs']}")


if 'parallel' in PARTS:
    parallel_bench()
if 'many' in PARTS:
    many_bench()
if 'churn' in PARTS:
    churn_bench()
