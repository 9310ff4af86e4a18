# usage: a5_baseexc.py CASE ; CASE in ki_start ki_stop se_nursery badrepr_start ki_receive
import trio, runtime, sys
from runtime import Actor, Supervisor, child
CASE=sys.argv[1]
stops=[]
class Bad(Exception):
    def __repr__(self): raise RuntimeError("repr boom")
    def __str__(self): raise RuntimeError("str boom")
class Other(Actor):
    async def on_stop(self, r): stops.append(("other", str(r)[:40]))
    async def receive(self, m): return m
class X(Actor):
    async def on_start(self):
        if CASE=="ki_start": raise KeyboardInterrupt
        if CASE=="badrepr_start": raise Bad()
        if CASE=="se_nursery":
            async def t(): await trio.sleep(0.05); raise SystemExit(3)
            self.ctx.nursery.start_soon(t)
    async def on_stop(self, r):
        stops.append(("x", type(r).__name__))
        if CASE=="ki_stop": raise KeyboardInterrupt
    async def receive(self, m):
        if CASE=="ki_receive": raise KeyboardInterrupt
        return m
async def main():
    tree=Supervisor("app",children=[child(Other,name="o"),child(X,name="x")])
    with trio.fail_after(10):
        async with runtime.open_system(tree) as s:
            s.ref("/app/x").tell(1)
            await trio.sleep(0.3)
            print("body end")
try:
    trio.run(main)
    print("returned normally")
except BaseException as e:
    print("raised", type(e).__name__, repr(e)[:200] if not isinstance(e, BaseExceptionGroup) else e.exceptions)
print("stops", stops)
