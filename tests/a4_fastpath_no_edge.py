# ref.send's "room now" fast path skips begin_wait, but put_wait still waits when
# senders are in line (a let-in sender not yet run). A then waits on B with no edge,
# and B -> A (a real cycle) is not refused: both hang.
import trio, runtime, sys as _s
from runtime import Actor, Supervisor, child, Mailbox
ev_a = trio.Event(); ev_b = trio.Event()
out=[]; T0=0
class A(Actor):
    async def receive(self, msg):
        if msg=="go":
            await ev_a.wait()
            try:
                await self.ctx.system.ref("/app/b").send("a"); out.append(("a-sent", round(trio.current_time()-T0,2)))
            except Exception as e: out.append(("A",type(e).__name__))
class B(Actor):
    async def receive(self, msg):
        if msg=="hold": await ev_b.wait()
        elif msg=="fill":
            ev_a.set()
            await trio.sleep(0.01)
            try:
                await self.ctx.system.ref("/app/a").send("b"); out.append(("b-sent", round(trio.current_time()-T0,2)))
            except Exception as e: out.append(("B",type(e).__name__))
async def main():
    global T0; T0=trio.current_time()
    mb=Mailbox(capacity=1,overflow="block")
    tree=Supervisor("app",children=[child(A,name="a",mailbox=mb),child(B,name="b",mailbox=mb,shutdown=0.5)])
    with trio.move_on_after(4) as sc:
        async with runtime.open_system(tree) as system:
            a=system.ref("/app/a"); b=system.ref("/app/b")
            a.tell("go"); b.tell("hold"); await trio.sleep(0.02)
            a.tell("afill")      # A's mailbox full (A busy in go)
            b.tell("fill")       # B's mailbox full (B busy in hold)
            async def s(): await b.send("s")
            system_n = None
            async with trio.open_nursery() as n:
                n.start_soon(s); await trio.sleep(0.02)
                ev_b.set()
                await trio.sleep(2)
                n.cancel_scope.cancel()
    print(out, "<- HUNG until shutdown at 4s: real cycle not refused" if not any(o[0]=="B" for o in out) else "ok")
trio.run(main)
