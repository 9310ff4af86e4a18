# KeyboardInterrupt raised by on_stop during a normal graceful stop:
# expected: each on_stop runs once (reverse order: x, then o), KI propagates out of open_system.
import trio, runtime
from runtime import Actor, Supervisor, child
calls=[]
class O(Actor):
    async def on_stop(self, r): calls.append(("o.on_stop", r))
    async def receive(self, m): return m
class X(Actor):
    async def on_stop(self, r):
        calls.append(("x.on_stop", r))
        raise KeyboardInterrupt
    async def receive(self, m): return m
async def main():
    tree=Supervisor("app",children=[child(O,name="o"),child(X,name="x")])
    with trio.fail_after(10):
        async with runtime.open_system(tree) as s:
            await trio.sleep(0.1)
try: trio.run(main)
except BaseException as e: print("raised", type(e).__name__)
for c in calls: print(c)
