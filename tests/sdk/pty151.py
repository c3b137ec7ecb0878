"""Client 1.5.1's SDK opens a signed PTY stream on the unprefixed route (its upgrade
carries no Content-Type but signs `text/plain`), runs a command in the terminal,
resizes it, and ends the session."""
import asyncio
import base64
import json
import uuid

from ai.backend.client.session import AsyncSession


async def main():
    async with AsyncSession() as session:
        token = 'pty-' + uuid.uuid4().hex[:12]
        kernel = await session.Kernel.get_or_create('python3', client_token=token)
        stream = await kernel.stream_pty()
        await stream.resize(30, 100)
        await stream.send_str(json.dumps({'type': 'stdin', 'chars': base64.b64encode(b'echo pty-$((6*7))\n').decode()}))
        seen = ''
        async def read():
            nonlocal seen
            async for msg in stream:
                frame = json.loads(msg.data)
                if frame.get('type') == 'out':
                    seen += base64.b64decode(frame['data']).decode(errors='replace')
                    if 'pty-42' in seen:
                        return
        await asyncio.wait_for(read(), 20)
        await stream.close()
        await kernel.destroy()
        print('OK pty151')


asyncio.run(main())
