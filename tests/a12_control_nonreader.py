# 32 control clients that send requests but never read replies: send_all blocks with no timeout,
# the connections are "busy" (never idle) so never evicted -> the control face is locked out.
import socket, time, threading, trio, runtime, tempfile, pathlib, json
from runtime import Actor, Supervisor, child
class E(Actor):
    async def receive(self, m): return m
d=tempfile.mkdtemp()
with runtime.start_in_thread(Supervisor("app",children=[child(E,name=f"e{i}") for i in range(200)]), control=True, control_dir=d) as h:
    path=[p for p in pathlib.Path(d).iterdir()][0]
    socks=[]
    for i in range(32):
        s=socket.socket(socket.AF_UNIX); s.connect(str(path)); s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.setblocking(False)
        socks.append(s)
    req=(json.dumps({"op":"tree"})+"\n").encode()
    t=time.time()
    while time.time()-t<3:   # within the rate limit (50/s burst)
        for s in socks:
            try: s.send(req)
            except BlockingIOError: pass
        time.sleep(0.1)
    time.sleep(11)  # past IDLE_TIMEOUT
    c=socket.socket(socket.AF_UNIX); c.settimeout(3); c.connect(str(path))
    c.sendall(b'{"op":"info"}\n')
    try: print("new client got:", c.recv(300)[:200])
    except Exception as e: print("new client:", type(e).__name__, e, "<- control face locked out")
    h.stop()
    t=time.time()
print("stop took", round(time.time()-t,2))
