# A asks B, B asks C, C asks A  -> Deadlock expected (not a hang / AskTimeout)
import trio, runtime
from runtime import Actor, Supervisor, child
class Fwd(Actor):
    def __init__(self, nxt): self.nxt=nxt
    async def receive(self, msg):
        if msg>=3: return "end"
        return await self.ctx.system.ref(self.nxt).ask(msg+1, timeout=3)
async def main():
    tree=Supervisor("app",children=[child(Fwd,name="a",args=("/app/b",)),child(Fwd,name="b",args=("/app/c",)),child(Fwd,name="c",args=("/app/a",))])
    async with runtime.open_system(tree) as sys:
        try:
            print(await sys.ref("/app/a").ask(0, timeout=8))
        except Exception as e:
            print(type(e).__name__, e, "| cause:", type(e.__cause__).__name__, e.__cause__)
trio.run(main)
