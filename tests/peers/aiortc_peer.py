"""aiortc (an independent Python WebRTC stack) publishes through the SFU with
WHIP and a second aiortc peer receives it with WHEP.

Usage: aiortc_peer.py <base-url> <room> <publisher-token> <viewer-token>
Prints one JSON line per check; exits non-zero on failure.
"""

import asyncio
import json
import sys
import urllib.request

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

TIMEOUT = 30


def post_sdp(url: str, token: str, sdp: str):
    req = urllib.request.Request(
        url,
        data=sdp.encode(),
        method="POST",
        headers={"content-type": "application/sdp", "authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, r.read().decode(), r.headers.get("location")


def report(check: str, ok: bool, **detail):
    print(json.dumps({"check": check, "ok": ok, **detail}), flush=True)
    if not ok:
        sys.exit(1)


async def wait_for(predicate, timeout=TIMEOUT):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def main(base: str, room: str, pub_token: str, view_token: str):
    loop = asyncio.get_running_loop()

    publisher = RTCPeerConnection()
    publisher.addTrack(VideoStreamTrack())
    publisher.addTrack(AudioStreamTrack())
    await publisher.setLocalDescription(await publisher.createOffer())
    status, answer, location = await loop.run_in_executor(
        None, post_sdp, f"{base}/v1/rooms/{room}/whip", pub_token, publisher.localDescription.sdp
    )
    await publisher.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    connected = await wait_for(lambda: publisher.connectionState == "connected")
    report("aiortc publishes (WHIP)", status == 201 and connected, status=status, state=publisher.connectionState)

    viewer = RTCPeerConnection()
    viewer.addTransceiver("video", direction="recvonly")
    viewer.addTransceiver("audio", direction="recvonly")
    received = {"video": 0, "audio": 0}

    async def consume(track):
        while True:
            try:
                await track.recv()
            except Exception:
                return
            received[track.kind] += 1

    viewer.on("track", lambda track: asyncio.ensure_future(consume(track)))
    await viewer.setLocalDescription(await viewer.createOffer())
    status, answer, _ = await loop.run_in_executor(
        None, post_sdp, f"{base}/v1/rooms/{room}/whep", view_token, viewer.localDescription.sdp
    )
    await viewer.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    ok = await wait_for(lambda: received["video"] >= 10 and received["audio"] >= 10)
    report("aiortc receives (WHEP)", status == 201 and ok, **received)

    await viewer.close()
    await publisher.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
