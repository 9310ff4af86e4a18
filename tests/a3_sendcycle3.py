# send cycle A->B->C->A with full block mailboxes of cap 1
import trio, runtime
from runtime import Actor, Supervisor, child, Mailbox
class Fwd(Actor):
    def __init__(self, nxt): self.nxt=nxt
    async def receive(self, msg):
        await trio.sleep(0.05)
        try:
            for i in range(3):
                await self.ctx.system.ref(self.nxt).send(msg)
        except Exception as e:
            print(self.ctx.path, "got", type(e).__name__, e)
async def main():
    mb=Mailbox(capacity=1,overflow="block")
    tree=Supervisor("app",children=[child(Fwd,name=n,args=(f"/app/{x}",),mailbox=mb) for n,x in (("a","b"),("b","c"),("c","a"))])
    with trio.move_on_after(5) as sc:
        async with runtime.open_system(tree) as sys:
            for n in "abc": sys.ref("/app/"+n).tell("go")
            await trio.sleep(2)
    print("hung" if sc.cancelled_caught else "done")
trio.run(main)
