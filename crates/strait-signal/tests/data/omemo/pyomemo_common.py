"""Shared helpers for the python-omemo test peer (MIT python-omemo 2.1.0 driving the AGPL
oldmemo 2.1.0 and MIT twomemo 2.1.0 backends as black-box oracles; none of their code is part of
strait-signal). Storage and PEP are dicts, nothing touches the network."""
import json

import omemo
import oldmemo
import oldmemo.etree
import twomemo
import twomemo.etree

ALICE = "alice@example.org"
BOB = "bob@example.org"
NS_OLD = oldmemo.oldmemo.NAMESPACE
NS_TWO = twomemo.twomemo.NAMESPACE

BUNDLES = {}
DEVLISTS = {}
QUEUE = []


class MemStorage(omemo.Storage):
    def __init__(self, data=None):
        super().__init__(True)
        self.d = dict(data or {})

    async def _load(self, k):
        return omemo.Just(self.d[k]) if k in self.d else omemo.Nothing()

    async def _store(self, k, v):
        self.d[k] = v

    async def _delete(self, k):
        self.d.pop(k, None)


def make_impl(own_jid):
    class SM(omemo.SessionManager):
        @staticmethod
        async def _upload_bundle(b):
            BUNDLES[(b.namespace, b.bare_jid, b.device_id)] = b

        @staticmethod
        async def _download_bundle(ns, jid, dev):
            try:
                return BUNDLES[(ns, jid, dev)]
            except KeyError as e:
                raise omemo.BundleDownloadFailed() from e

        @staticmethod
        async def _delete_bundle(ns, dev):
            BUNDLES.pop((ns, own_jid, dev), None)

        @staticmethod
        async def _upload_device_list(ns, dl):
            DEVLISTS[(ns, own_jid)] = dl

        @staticmethod
        async def _download_device_list(ns, jid):
            return DEVLISTS.get((ns, jid), {})

        async def _evaluate_custom_trust_level(self, dev):
            return omemo.TrustLevel.TRUSTED

        async def _make_trust_decision(self, undecided, identifier):
            for d in undecided:
                await self.set_trust(d.bare_jid, d.identity_key, "T")

        @staticmethod
        async def _send_message(msg, jid):
            QUEUE.append((jid, msg))

    return SM


async def make_manager(jid, storage, label=None, only_two=False):
    backends = [twomemo.Twomemo(storage)]
    if not only_two:
        backends.insert(0, oldmemo.Oldmemo(storage))
    sm = await make_impl(jid).create(backends, storage, jid, label, "T")
    await sm.after_history_sync()
    return sm


def dump_state(path, sa, sb):
    with open(path, "w") as f:
        json.dump({"alice": sa.d, "bob": sb.d}, f, sort_keys=True, indent=1)


def load_state(path):
    with open(path) as f:
        s = json.load(f)
    return MemStorage(s["alice"]), MemStorage(s["bob"])
