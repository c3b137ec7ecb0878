"""Driver of scripts/bench_manager.sh: signs with the official SDK's signer, and
sends with one persistent HTTP client so that both sides of each comparison pay
the same client cost."""
import argparse
import json
import os
import re
import secrets
import subprocess
import time

import requests

from bench_common import VERSION, percentiles, record, rss_kib, signed_headers as _signed

parser = argparse.ArgumentParser()
parser.add_argument('--endpoint', required=True)
parser.add_argument('--agent', required=True)
parser.add_argument('--secret', required=True)
parser.add_argument('--manager-pid', type=int, required=True)
parser.add_argument('--bare', required=True)
parser.add_argument('--bare-pid', type=int, required=True)
args = parser.parse_args()
EXECUTES = int(os.environ.get('BENCH_EXECUTES', 500))
SESSIONS = int(os.environ.get('BENCH_SESSIONS', 200))
SECONDS = int(os.environ.get('BENCH_SECONDS', 10))
# Which parts to run (all by default): execute,throughput,memory,pty.
PARTS = set(os.environ.get('BENCH_PARTS', 'execute,throughput,memory,pty').split(','))
# When set, `perf record -g` samples the manager during the signed GET run into this file.
PERF_OUT = os.environ.get('BENCH_PERF')
# Alternating wrk runs of the gateway and the bare endpoint.
ROUNDS = int(os.environ.get('BENCH_ROUNDS', 5))
# wrk's connections (closed loop: at most CONNECTIONS / round trip requests/s).
CONNECTIONS = int(os.environ.get('BENCH_CONNECTIONS', 64))
http = requests.Session()


def signed_headers(method, path, content, content_type='application/json', date=None, version=VERSION):
    return _signed(args.endpoint, method, path, content, content_type, date, version)


def call(method, path, body=None):
    content = json.dumps(body).encode() if body is not None else b''
    response = http.request(method, f'{args.endpoint}/v2/{path}', data=content,
                            headers=signed_headers(method, path, content))
    if response.status_code // 100 != 2:
        raise SystemExit(f'{method} {path}: {response.status_code} {response.text}')
    return response.json() if response.content else None


for _ in range(100):
    try:
        if http.get(f'http://{args.agent}/health', headers={'Authorization': f'Bearer {args.secret}'}).ok:
            break
    except requests.ConnectionError:
        pass
    time.sleep(0.1)

# 1. Execute round trip of print(1): through the gateway, and straight to the agent.
token = 'bench-exec-' + secrets.token_hex(4)
for attempt in range(100):  # until the agent's first heartbeat registered it
    body = json.dumps({'lang': 'python3', 'clientSessionToken': token}).encode()
    created = http.post(f'{args.endpoint}/v2/kernel/create', data=body,
                        headers=signed_headers('POST', 'kernel/create', body))
    if created.status_code != 503:
        break
    time.sleep(0.2)
if created.status_code != 201:
    raise SystemExit(f'POST kernel/create: {created.status_code} {created.text}')
agent_kernels = http.get(f'http://{args.agent}/kernels', headers={'Authorization': f'Bearer {args.secret}'}).json()
kernel_id = agent_kernels['kernels'][0]['id']


def via_gateway():
    result = call('POST', f'kernel/{token}', {'mode': 'query', 'code': 'print(1)', 'runId': secrets.token_hex(8)})
    assert result['result']['console'] == [['stdout', '1\n']], result


def via_agent():
    body = {'api_version': 2, 'run_id': secrets.token_hex(8), 'mode': 'query', 'code': 'print(1)', 'options': {}}
    response = http.post(f'http://{args.agent}/kernels/{kernel_id}/execute', json=body,
                         headers={'Authorization': f'Bearer {args.secret}'})
    assert response.json()['console'] == [['stdout', '1\n']], response.text


def execute_bench():
    timings = {'gateway': [], 'agent': []}
    for _ in range(50):
        via_gateway()
        via_agent()
    for _ in range(EXECUTES):
        for name, run in (('gateway', via_gateway), ('agent', via_agent)):
            started = time.perf_counter()
            run()
            timings[name].append((time.perf_counter() - started) * 1000)
    gw50, gw99 = percentiles(timings['gateway'])
    ag50, ag99 = percentiles(timings['agent'])
    print(f'execute print(1), {EXECUTES} runs each:')
    print(f'  agent RPC round trip   p50 {ag50:.3f} ms  p99 {ag99:.3f} ms')
    print(f'  through the gateway    p50 {gw50:.3f} ms  p99 {gw99:.3f} ms  '
          f'(p50 overhead {gw50 - ag50:+.3f} ms, target <= +1 ms)')
    record('execute print(1) p50 through the gateway (ms)', f'{gw50:.3f}')
    record('  overhead over the agent RPC (ms)', f'{gw50 - ag50:+.3f}')


if 'execute' in PARTS:
    execute_bench()


# 2. Signed GET /v3/kernel/{id} under wrk -c64, next to a bare actix-web endpoint.
def cpu_seconds(pid):
    with open(f'/proc/{pid}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def wrk(url, headers, pid=None):
    """Requests/s, p50 latency, and the CPU time `pid` spent per request (us)."""
    command = ['wrk', '-t2', f'-c{CONNECTIONS}', f'-d{SECONDS}s', '--latency', url]
    for name, value in headers.items():
        command[1:1] = ['-H', f'{name}: {value}']
    cpu_before = cpu_seconds(pid) if pid else 0
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(pid) - cpu_before if pid else 0
    rate = float(re.search(r'Requests/sec:\s+([\d.]+)', output).group(1))
    errors = re.search(r'Non-2xx or 3xx responses: (\d+)', output)
    if errors:
        raise SystemExit(f'wrk saw {errors.group(1)} failed responses:\n{output}')
    p50 = re.search(r'\s50%\s+(\S+)', output).group(1)
    requests_done = int(re.search(r'(\d+) requests in', output).group(1))
    return rate, p50, cpu * 1e6 / requests_done, requests_done


REDIS_ADDR = os.environ.get('BENCH_REDIS_ADDR')


def redis_calls():
    """Commands Redis has run (all databases), or None embedded."""
    if not REDIS_ADDR:
        return None
    host, port = REDIS_ADDR.rsplit(':', 1)
    stats = subprocess.run(['redis-cli', '-h', host, '-p', port, 'INFO', 'commandstats'],
                           capture_output=True, text=True, check=True).stdout
    return sum(int(m) for m in re.findall(r'calls=(\d+)', stats))


def throughput_bench():
    # One signature serves the whole run: the request is identical and its date valid for 15 minutes.
    headers = signed_headers('GET', f'kernel/{token}', b'', content_type='', version='v3.20170615')
    perf = None
    if PERF_OUT:
        perf = subprocess.Popen(['perf', 'record', '-g', '-o', PERF_OUT, '-p', str(args.manager_pid),
                                 '--', 'sleep', str(SECONDS)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid = args.manager_pid
    # Alternating runs, medians: both sides see the same machine noise.
    gateway_runs, bare_runs, redis_per_request = [], [], []
    for i in range(ROUNDS):
        if perf and i == 0:
            gateway_runs.append(wrk(f'{args.endpoint}/v3/kernel/{token}', headers, pid))
            perf.wait()
            continue
        calls_before = redis_calls()
        gateway_runs.append(wrk(f'{args.endpoint}/v3/kernel/{token}', headers, pid))
        if calls_before is not None:
            redis_per_request.append((redis_calls() - calls_before) / gateway_runs[-1][3])
        bare_runs.append(wrk(args.bare, {}, args.bare_pid))
    if not bare_runs:
        bare_runs.append(wrk(args.bare, {}, args.bare_pid))
    gateway_rate, gateway_p50, gateway_cpu, _ = sorted(gateway_runs)[len(gateway_runs) // 2]
    bare_rate, bare_p50, bare_cpu, _ = sorted(bare_runs)[len(bare_runs) // 2]
    ratios = sorted(g[0] / b[0] for g, b in zip(gateway_runs, bare_runs))
    # Where the time goes: the middleware alone, then authentication alone.
    root_rate, _, root_cpu, _ = wrk(f'{args.endpoint}/v3', {}, pid)
    auth_rate, _, auth_cpu, _ = wrk(f'{args.endpoint}/v2/authorize',
                                 signed_headers('GET', 'authorize', b'', content_type=''), pid)
    print(f'requests/s under wrk -t2 -c{CONNECTIONS} -d{SECONDS}s (and server CPU time per request); '
          f'medians of {ROUNDS} alternating runs for the last two:')
    print(f'  unsigned GET /v3       {root_rate:10.0f} req/s  {root_cpu:5.1f} us  (middleware only)')
    print(f'  signed GET /authorize  {auth_rate:10.0f} req/s  {auth_cpu:5.1f} us  (plus signature and rate limit)')
    print(f'  bare actix-web JSON    {bare_rate:10.0f} req/s  {bare_cpu:5.1f} us  p50 {bare_p50}')
    print(f'  signed GET /kernel/id  {gateway_rate:10.0f} req/s  {gateway_cpu:5.1f} us  p50 {gateway_p50}  '
          f'({gateway_rate / bare_rate:.2f}x, target >= 0.5x)')
    print('  ratio of each run pair: ' + ', '.join(f'{r:.2f}' for r in ratios))
    record('wrk connections', CONNECTIONS)
    record('bare actix-web JSON (req/s)', f'{bare_rate:.0f}')
    record('signed GET /v3/kernel/{id} (req/s)', f'{gateway_rate:.0f}')
    record('  of the bare endpoint', f'{gateway_rate / bare_rate:.2f}x')
    record('  p50 latency', gateway_p50)
    record('  manager CPU per request (us)', f'{gateway_cpu:.1f}')
    if redis_per_request:
        median = sorted(redis_per_request)[len(redis_per_request) // 2]
        print(f'  Redis commands per signed request: {median:.3f}')
        record('  Redis commands per request', f'{median:.3f}')


def memory_bench():
    # Bash kernels are light on the agent side.
    before = rss_kib(args.manager_pid)
    tokens = [f'bench-mem-{i:05d}-{secrets.token_hex(2)}' for i in range(SESSIONS)]
    for t in tokens:
        call('POST', 'kernel/create', {'lang': 'bash', 'clientSessionToken': t})
        call('GET', f'kernel/{t}')
    time.sleep(2)
    after = rss_kib(args.manager_pid)
    print(f'manager RSS: {before} KiB before, {after} KiB with {SESSIONS} more live sessions: '
          f'{(after - before) / SESSIONS:.1f} KiB per session (target <= 64 KiB)')
    record('manager RSS per live session (KiB)', f'{(after - before) / SESSIONS:.1f}')
    for t in tokens:
        call('DELETE', f'kernel/{t}')


if 'throughput' in PARTS:
    throughput_bench()
# 3. Manager memory per live session.
if 'memory' in PARTS:
    memory_bench()
call('DELETE', f'kernel/{token}')

# 4. PTY streams: many at once through this manager, memory, and echo latency.
import asyncio  # noqa: E402
import base64  # noqa: E402

import aiohttp  # noqa: E402

STREAMS = int(os.environ.get('BENCH_STREAMS', 500))
PER_SESSION = 25  # each stream is a shell in its kernel, under the kernel's process limit (128)


async def pty_bench():
    tokens = [f'bench-pty-{i:03d}-{secrets.token_hex(2)}' for i in range((STREAMS + PER_SESSION - 1) // PER_SESSION)]
    for t in tokens:
        call('POST', 'kernel/create', {'lang': 'bash', 'clientSessionToken': t})
    before = rss_kib(args.manager_pid)
    ws_base = args.endpoint.replace('http://', 'ws://')
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http_session:
        async def connect(i):
            token = tokens[i // PER_SESSION]
            path = f'stream/kernel/{token}/pty'
            headers = signed_headers('GET', path, b'', content_type='')
            return await http_session.ws_connect(f'{ws_base}/v2/{path}', headers=headers, max_msg_size=1 << 20)

        sockets = []
        print(f'  opening {STREAMS} PTY streams...', flush=True)
        for start in range(0, STREAMS, 50):
            sockets += await asyncio.gather(*(connect(i) for i in range(start, min(start + 50, STREAMS))))
            print(f'  {len(sockets)} open', flush=True)
        print(f'  {len(sockets)} open', flush=True)
        await asyncio.sleep(2)
        during = rss_kib(args.manager_pid)

        async def echo(ws, char):
            frame = json.dumps({'type': 'stdin', 'chars': base64.b64encode(char.encode()).decode()})
            started = time.perf_counter()
            await ws.send_str(frame)
            while True:
                msg = await ws.receive(timeout=10)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise SystemExit(f'PTY stream closed: {msg.type} {msg.data} {ws.close_code}')
                data = base64.b64decode(json.loads(msg.data)['data']).decode(errors='replace')
                if char in data:
                    return (time.perf_counter() - started) * 1000

        # Drain the prompts first, then time single keystrokes (the terminal echoes them).
        closed = []
        for ws in sockets:
            while True:
                try:
                    msg = await ws.receive(timeout=0.05)
                except asyncio.TimeoutError:
                    break
                if msg.type != aiohttp.WSMsgType.TEXT:
                    closed.append((msg.type, msg.data, msg.extra))
                    break
        if closed:
            raise SystemExit(f'{len(closed)} PTY streams were closed early, e.g. {closed[:3]}')
        samples = []
        for i in range(400):
            ws = sockets[(i * 7) % len(sockets)]
            samples.append(await echo(ws, 'xyzw'[i % 4]))
        p50, p99 = percentiles(samples)
        for ws in sockets:
            await ws.close()
    await asyncio.sleep(2)
    after = rss_kib(args.manager_pid)
    print(f'PTY: {len(sockets)} concurrent streams over {len(tokens)} sessions:')
    print(f'  manager RSS {before} KiB before, {during} KiB with the streams open '
          f'({(during - before) / len(sockets):.1f} KiB per stream), {after} KiB after closing them')
    print(f'  stdin -> stdout echo of one keystroke: p50 {p50:.3f} ms  p99 {p99:.3f} ms ({len(samples)} samples)')
    # 1,000 connect/disconnect cycles: nothing may stay behind.
    def fds(pid):
        return len(os.listdir(f'/proc/{pid}/fd'))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http_session:
        async def cycle(i):
            token = tokens[i % len(tokens)]
            path = f'stream/kernel/{token}/pty'
            ws = await http_session.ws_connect(f'{ws_base}/v2/{path}',
                                               headers=signed_headers('GET', path, b'', content_type=''))
            await ws.close()

        for i in range(20):
            await cycle(i)
        await asyncio.sleep(1)
        rss0, fds0 = rss_kib(args.manager_pid), fds(args.manager_pid)
        for start in range(0, 1000, 10):
            await asyncio.gather(*(cycle(i) for i in range(start, start + 10)))
        await asyncio.sleep(2)
        rss1, fds1 = rss_kib(args.manager_pid), fds(args.manager_pid)
    print(f'  1,000 connect/disconnect cycles: manager RSS {rss0} -> {rss1} KiB, open fds {fds0} -> {fds1}')
    for t in tokens:
        call('DELETE', f'kernel/{t}')


if 'pty' in PARTS:
    asyncio.run(pty_bench())
