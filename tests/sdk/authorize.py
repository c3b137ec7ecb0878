"""Signs /authorize requests with the official SDK (backend.ai-client 1.0.6).

Reads BACKEND_ENDPOINT, BACKEND_ACCESS_KEY and BACKEND_SECRET_KEY like the SDK does.
Exits non-zero on any mismatch.
"""
import sys

from ai.backend.client.request import Request


def check(method, content):
    response = Request(method, '/authorize', content).send()
    body = response.json()
    if response.status != 200 or body.get('authorized') != 'yes':
        sys.exit(f'{method} /authorize: {response.status} {body}')
    return body


body = check('GET', {'echo': 'hello from the SDK'})
assert body['echo'] == 'hello from the SDK', body
body = check('POST', {'echo': {'nested': [1, 2, 3]}})
assert body['echo'] == {'nested': [1, 2, 3]}, body

# A wrong secret must be refused.
from ai.backend.client.config import APIConfig  # noqa: E402
import os  # noqa: E402
bad = APIConfig(endpoint=os.environ['BACKEND_ENDPOINT'], access_key=os.environ['BACKEND_ACCESS_KEY'],
                secret_key='wrong' + os.environ['BACKEND_SECRET_KEY'])
response = Request('GET', '/authorize', {'echo': 1}, config=bad).send()
if response.status != 401:
    sys.exit(f'a wrong secret got {response.status}')
print('OK authorize')
