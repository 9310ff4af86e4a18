# foreign threads tell into a full block mailbox while the system stops:
# every thread must be released (no hang), and every message either handled, dead-lettered, or refused with an error
import threading, time, trio, runtime
from runtime import Actor, Supervisor, child, Mailbox
handled=[]
class Slow(Actor):
    async def receive(self, m):
        await trio.sleep(0.01); handled.append(m)
res={}
def worker(h, i):
    r=h.ref("/app/s"); ok=0; err=None
    for k in range(200):
        try: r.tell((i,k)); ok+=1
        except Exception as e: err=type(e).__name__; break
    res[i]=(ok,err)
t=time.monotonic()
with runtime.start_in_thread(Supervisor("app",children=[child(Slow,name="s",mailbox=Mailbox(capacity=4,overflow="block"),shutdown=0.5)])) as h:
    ths=[threading.Thread(target=worker,args=(h,i),daemon=True) for i in range(6)]
    for x in ths: x.start()
    time.sleep(0.3)
    dl_before=None
    try: snap=h.snapshot(); 
    except Exception as e: snap=None
h_dead = None
for x in ths: x.join(5)
alive=[x for x in ths if x.is_alive()]
sent=sum(v[0] for v in res.values())
print("threads still blocked:", len(alive), "results:", res)
print("sent ok:", sent, "handled:", len(handled), "elapsed", round(time.monotonic()-t,2))
dl=h._system.dead_letters.counts
print("dead letters after stop:", dl)
print("LOST:", sent-len(handled)-sum(dl.values()))
