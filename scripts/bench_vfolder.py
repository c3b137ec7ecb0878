"""Virtual folder transfers: a 1 GiB file uploaded and downloaded through the manager,
streamed (a generator body up, a streamed answer down), next to a plain `cp` of the same
file on the same disk, with the manager's RSS sampled throughout. Run by
bench_manager.sh (part `vfolder`); BENCH_VFOLDER_MIB sets the size."""
import argparse
import gzip
import os
import shutil
import subprocess
import threading
import time
import zlib

import requests

from bench_common import record, rss_kib, signed_headers

CHUNK = 1 << 20


class PeakRss:
    """Samples a process's RSS every 20 ms until stopped."""

    def __init__(self, pid):
        self.pid, self.peak, self.running = pid, rss_kib(pid), True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while self.running:
            self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(0.02)

    def stop(self):
        self.running = False
        self.thread.join()
        return self.peak


def call(endpoint, method, path, body=b'', content_type='application/json', **kwargs):
    """An API v4 request (no body in the signature) on the `/v4` routes: the SDK 1.0.6
    signer puts the version prefix in the signed path."""
    mime = content_type.split(';')[0]
    headers = signed_headers(endpoint, method, path.lstrip('/'), b'', mime, version='v4.20181215')
    headers['Content-Type'] = content_type
    return requests.request(method, f'{endpoint}/v4/{path.lstrip("/")}', data=body, headers=headers, **kwargs)


def multipart_stream(path, boundary):
    yield (f'--{boundary}\r\nContent-Disposition: form-data; name="src"; filename="big.bin"\r\n'
           'Content-Type: application/octet-stream\r\n\r\n').encode()
    with open(path, 'rb') as f:
        while chunk := f.read(CHUNK):
            yield chunk
    yield f'\r\n--{boundary}--\r\n'.encode()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--endpoint', required=True)
    parser.add_argument('--manager-pid', type=int, required=True)
    parser.add_argument('--work', required=True)
    args = parser.parse_args()
    mib = int(os.environ.get('BENCH_VFOLDER_MIB', '1024'))
    size = mib << 20
    source = os.path.join(args.work, 'big.bin')
    if not os.path.exists(source):
        # Incompressible data: the download's gzip does real work.
        subprocess.run(['dd', 'if=/dev/urandom', f'of={source}', 'bs=1M', f'count={mib}', 'status=none'],
                       check=True)
    subprocess.run(['sync'], check=True)
    copy = os.path.join(args.work, 'copy.bin')
    started = time.monotonic()
    shutil.copyfile(source, copy)
    os.sync()
    cp_secs = time.monotonic() - started
    os.unlink(copy)

    name = f'bench{os.getpid()}'
    response = call(args.endpoint, 'POST', '/folders', b'{"name": "%s"}' % name.encode())
    response.raise_for_status()
    before = rss_kib(args.manager_pid)
    sampler = PeakRss(args.manager_pid)
    boundary = 'benchboundary0123456789'
    started = time.monotonic()
    response = call(args.endpoint, 'POST', f'/folders/{name}/upload', multipart_stream(source, boundary),
                    content_type=f'multipart/form-data; boundary={boundary}')
    os.sync()
    up_secs = time.monotonic() - started
    up_peak = sampler.stop()
    assert response.status_code == 201, response.text

    sampler = PeakRss(args.manager_pid)
    started = time.monotonic()
    response = call(args.endpoint, 'GET', f'/folders/{name}/download', b'{"files": ["big.bin"]}', stream=True)
    assert response.status_code == 200, response.text
    received, inflater = 0, zlib.decompressobj(wbits=31)
    header_done = False
    buffer = b''
    for chunk in response.iter_content(CHUNK):
        if not header_done:
            buffer += chunk
            if b'\r\n\r\n' not in buffer:
                continue
            chunk = buffer.split(b'\r\n\r\n', 1)[1]
            header_done = True
        received += len(inflater.decompress(chunk))
    down_secs = time.monotonic() - started
    down_peak = sampler.stop()
    assert received == size, (received, size)
    call(args.endpoint, 'DELETE', f'/folders/{name}')

    mb = size / 1e6
    print(f'vfolder: {mib} MiB; cp {mb / cp_secs:.0f} MB/s; upload {mb / up_secs:.0f} MB/s '
          f'(manager RSS +{(up_peak - before) / 1024:.1f} MiB); download {mb / down_secs:.0f} MB/s '
          f'(RSS +{(down_peak - before) / 1024:.1f} MiB)')
    record(f'vfolder {mib} MiB: cp of the same file (MB/s)', f'{mb / cp_secs:.0f}')
    record(f'vfolder {mib} MiB: upload (MB/s)', f'{mb / up_secs:.0f}')
    record(f'vfolder {mib} MiB: download, gzip (MB/s)', f'{mb / down_secs:.0f}')
    record('vfolder: manager RSS growth during upload (MiB)', f'{(up_peak - before) / 1024:.1f}')
    record('vfolder: manager RSS growth during download (MiB)', f'{(down_peak - before) / 1024:.1f}')


if __name__ == '__main__':
    main()
