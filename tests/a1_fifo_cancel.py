# many senders on a full block mailbox, some cancelled while waiting; consumer drains
import trio, runtime
from runtime import Actor, Mailbox, Supervisor, child
got=[]
gate=trio.Event()
class Slow(Actor):
    async def receive(self, msg):
        if msg=="hold": await gate.wait(); return
        got.append(msg)
async def main():
    tree=Supervisor("app",children=[child(Slow,name="s",mailbox=Mailbox(capacity=2,overflow="block"))])
    with trio.fail_after(20):
        async with runtime.open_system(tree) as sys:
            r=sys.ref("/app/s")
            r.tell("hold"); await trio.sleep(0.05)
            r.tell(("x",0)); r.tell(("x",1))
            scopes={}
            async def sender(i):
                with trio.CancelScope() as sc:
                    scopes[i]=sc
                    for k in range(5):
                        await r.send((i,k))
            async with trio.open_nursery() as n:
                for i in range(10):
                    n.start_soon(sender,i); await trio.sleep(0)
                await trio.sleep(0.05)
                for i in (0,3,9): scopes[i].cancel()
                gate.set()
            await trio.sleep(0.2)
            st=sys.snapshot()
    per={}
    for m in got:
        per.setdefault(m[0],[]).append(m[1])
    for i,l in sorted(per.items(), key=str):
        assert l==sorted(l),(i,l)
    print("ok", {i:len(l) for i,l in per.items()})
trio.run(main)
