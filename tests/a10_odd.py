import math, trio, runtime
from runtime import Actor, Supervisor, child, Mailbox
class E(Actor):
    async def receive(self, m): return m
class Plain(Actor):
    def receive(self, m): return m
def t(label, f):
    try: r=f(); print(label, "->", r)
    except Exception as e: print(label, "->", type(e).__name__, e)
async def at(label, f):
    try: r=await f(); print(label, "->", r)
    except Exception as e: print(label, "->", type(e).__name__, e)
t("child plain-def receive", lambda: child(Plain))
t("Mailbox capacity=10**12", lambda: Mailbox(capacity=10**12))
t("child shutdown=-1", lambda: child(E, shutdown=-1))
t("child shutdown=nan", lambda: child(E, shutdown=float('nan')))
t("Supervisor within=nan", lambda: Supervisor("x", within=float('nan')))
t("Supervisor within=inf", lambda: Supervisor("x", within=float('inf')))
t("Supervisor name=''", lambda: Supervisor(""))
t("child name with /", lambda: child(E, name="a/b"))
async def main():
    tree=Supervisor("app",children=[child(E,name="e")])
    async with runtime.open_system(tree) as s:
        r=s.ref("/app/e")
        await at("ask timeout=inf", lambda: r.ask(1, timeout=math.inf))
        await at("ask timeout=nan", lambda: r.ask(1, timeout=math.nan))
        await at("ask timeout=-0.0", lambda: r.ask(1, timeout=-0.0))
        await at("ask timeout=0", lambda: r.ask(1, timeout=0))
        await at("ask timeout=None", lambda: r.ask(1, timeout=None))
        await at("ask timeout=1e300", lambda: r.ask(1, timeout=1e300))
        await at("ask timeout=True", lambda: r.ask(1, timeout=True))
        await at("ask timeout='1'", lambda: r.ask(1, timeout='1'))
        t("tell timeout=nan", lambda: r.tell(1, timeout=math.nan))
        t("send_after nan", lambda: s.ref("/app/e") and None)
        t("ref('/app/nope')", lambda: s.ref("/app/nope"))
        t("ref('')", lambda: s.ref(""))
        t("ref('app/e')", lambda: s.ref("app/e"))
    await at("ask after stop", lambda: r.ask(1))
    await at("send after stop", lambda: r.send(1))
    t("tell after stop", lambda: r.tell(1))
    t("ref after stop", lambda: s.ref("/app/e"))
    t("snapshot after stop", lambda: s.snapshot() and "ok")
    t("start_child after stop", lambda: s.start_child("/app", child(E, name="z")))
    await at("publish after stop", lambda: s.publish("x.y", 1))
trio.run(main)
