# usage: a8_run_signals.py N_SIGNALS PHASE  (PHASE: start = hung on_start; stop = hung on_stop)
import os, signal, sys, threading, time, trio, runtime
from runtime import Actor, Supervisor, child
N=int(sys.argv[1]); PHASE=sys.argv[2]
calls=[]
class A(Actor):
    async def on_start(self): calls.append("a.start")
    async def on_stop(self, r): calls.append(("a.stop", r))
    async def receive(self, m): return m
class H(Actor):
    async def on_start(self):
        calls.append("h.start")
        if PHASE=="start": await trio.sleep(30)
    async def on_stop(self, r):
        calls.append(("h.stop", r))
        if PHASE=="stop": await trio.sleep(30)
    async def receive(self, m): return m
def killer():
    time.sleep(0.5)
    for i in range(N):
        os.kill(os.getpid(), signal.SIGINT); time.sleep(0.3)
threading.Thread(target=killer, daemon=True).start()
t=time.monotonic()
try:
    runtime.run(Supervisor("app",children=[child(A,name="a"),child(H,name="h",shutdown=3)]))
    print("returned")
except BaseException as e: print("raised", type(e).__name__, e)
print("elapsed", round(time.monotonic()-t,2), calls)
