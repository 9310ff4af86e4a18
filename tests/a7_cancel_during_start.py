# open_system under move_on_after that fires while the tree is starting:
# 'a' started (on_start ran) -> is its on_stop run? does open_system return/raise sanely?
import trio, runtime, time
from runtime import Actor, Supervisor, child
calls=[]
class A(Actor):
    async def on_start(self): calls.append("a.start")
    async def on_stop(self, r): calls.append(("a.stop", r))
    async def receive(self, m): return m
class Slow(Actor):
    async def on_start(self): calls.append("slow.start"); await trio.sleep(1); calls.append("slow.started")
    async def on_stop(self, r): calls.append(("slow.stop", r))
    async def receive(self, m): return m
async def main():
    tree=Supervisor("app",children=[child(A,name="a"),child(Slow,name="slow")])
    t=time.monotonic()
    with trio.move_on_after(0.2) as sc:
        async with runtime.open_system(tree) as s:
            calls.append("BODY RAN")
            await trio.sleep(5)
    print("cancelled_caught", sc.cancelled_caught, "elapsed", round(time.monotonic()-t,2))
try: trio.run(main)
except BaseException as e: print("raised", type(e).__name__, e)
print(calls)
