import trio, runtime
from runtime import Actor, Supervisor, child
class E(Actor):
    async def receive(self, m): return m
class Stopper(Actor):
    async def on_stop(self, r):
        # during the graceful stop, siblings started before us still exist
        try: print("during stop: ref(/app/e) ->", self.ctx.system.ref("/app/e"))
        except Exception as e: print("during stop: ref(/app/e) ->", type(e).__name__, e)
    async def receive(self, m): return m
async def main():
    async with runtime.open_system(Supervisor("app",children=[child(E,name="e"),child(Stopper,name="s")])) as s:
        pass
    for label, coro in [("start_child", lambda: s.start_child("/app", child(E, name="z"))),
                        ("terminate_child", lambda: s.terminate_child("/app/e"))]:
        try: print(label, "->", await coro())
        except Exception as e: print(label, "->", type(e).__name__, e)
    try: print("ref ->", s.ref("/app/e"))
    except Exception as e: print("ref after stop ->", type(e).__name__, e)
trio.run(main)
