"""Build tests/data/retrieval_corpus.json: short memory-like texts and labelled queries (§14).

Deterministic (seeded): `python tests/data/make_retrieval_corpus.py` rewrites the same file.
Three kinds of query, each with the ids of its relevant memories:

- `identifier`: a ticket number, error code or function name inside a question
  ("what did we decide about INC-48213?"). The memory that holds it says it once among ordinary
  words. BM25 finds it (the identifier is a rare, high-IDF term); an embedding that weighs every
  word alike, or a language model that has never seen the string, drowns it in the question.
- `order`: who prefers A to B in a context, where the corpus also says the reverse of other
  people ("prefers coffee to tea"). The same words in another order: BM25 cannot tell them
  apart, an embedding of word pairs (the hash embedder's bigrams) or a sentence model can.
- `paraphrase`: a fact asked in other words (synonyms, no shared content word). Keyword search
  misses it; a semantic embedder (MiniLM) finds it; the hash embedder misses it too.

Plus filler memories that share the vocabulary. Public domain.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).with_name("retrieval_corpus.json")
SEED = 20261202

PEOPLE = ["Alice", "Bruno", "Chen", "Dana", "Emeka", "Farah", "Gita", "Hugo", "Ines", "Jonas",
          "Kiri", "Lena", "Mateo", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tariq",
          "Uma", "Vera", "Wen", "Ximena", "Yusuf", "Zoe"]
SERVICES = ["billing", "search", "auth", "checkout", "payments", "ingest", "reporting", "gateway",
            "scheduler", "notifications", "inventory", "ledger"]
SYMPTOMS = ["timed out under load", "returned stale data", "leaked connections",
            "dropped messages", "ran out of memory", "retried forever", "logged secrets",
            "double charged customers", "served the wrong locale", "deadlocked at startup"]
FIXES = ["raising the pool size", "adding a cache expiry", "rolling back the release",
         "pinning the client library", "adding a retry budget", "sharding the queue",
         "fixing the timezone handling", "rotating the credentials"]
QUESTIONS = ["what did we decide about {x}?", "remind me what happened with {x}",
             "notes on {x} please", "who worked on {x} and why", "any context for {x}?"]
VERBS = ["parse", "load", "merge", "sync", "flush", "render", "reconcile", "validate", "export",
         "compact"]
NOUNS = ["invoice", "ledger", "batch", "session", "config", "report", "cursor", "snapshot",
         "manifest", "payload"]
DRINKS = ["tea", "coffee", "cocoa", "juice", "water", "soda", "kombucha", "matcha"]
CONTEXTS = ["at standup", "during the offsite", "on night shifts", "before demos",
            "in the morning", "after lunch", "on release days", "at the retro"]
# (memory, question) pairs that share no content word: the fact, then the same fact asked.
PARAPHRASES = [
    ("{p} repaired the broken laptop charger", "who fixed the damaged notebook power adapter"),
    ("{p} is allergic to peanuts", "who cannot eat groundnuts"),
    ("{p} moved to the Lisbon office", "who relocated to Portugal"),
    ("{p} adopted a puppy last month", "who got a new dog recently"),
    ("{p} runs marathons on weekends", "who does long distance running"),
    ("{p} speaks fluent Japanese", "who knows the language of Tokyo"),
    ("{p} is on parental leave until spring", "who is away caring for a newborn"),
    ("{p} prefers working from home", "who likes remote work"),
    ("{p} bought an electric car", "who purchased an EV vehicle"),
    ("{p} plays the cello in an orchestra", "who is a classical string musician"),
    ("{p} hates early meetings", "who dislikes calls at dawn"),
    ("{p} broke a wrist skiing", "who was injured on the slopes"),
    ("{p} is learning to fly planes", "who is training to be a pilot"),
    ("{p} grew up on a farm", "who had a rural childhood"),
    ("{p} writes poetry in the evenings", "who composes verse at night"),
    ("{p} volunteers at the animal shelter", "who helps rescue pets for free"),
    ("{p} got married in June", "who had a wedding this summer"),
    ("{p} is vegetarian", "who does not eat meat"),
    ("{p} collects vintage vinyl records", "who has old music albums"),
    ("{p} climbed Kilimanjaro", "who reached the summit of Africa's highest mountain"),
]
FILLER = ["{p} reviewed the {s} dashboards and found nothing unusual",
          "the {s} team meets on Thursdays to plan the next sprint",
          "{p} asked for more tests around the {s} service",
          "we should document how {s} handles retries and timeouts",
          "{p} is the contact for questions about {s} deployments",
          "remember to update the {s} runbook after every incident",
          "{p} thinks the {s} latency graphs look noisy this week"]


def build(seed: int = SEED) -> dict[str, object]:
    """The corpus: {"memories": {id: text}, "queries": [{query, kind, relevant}]}."""
    rng = random.Random(seed)
    memories: dict[str, str] = {}
    queries: list[dict[str, object]] = []

    def add(text: str) -> str:
        mid = f"m{len(memories):05d}"
        memories[mid] = text
        return mid

    # identifiers: 300 each of tickets, error codes and function names
    used: set[str] = set()
    for i in range(900):
        kind = i % 3
        while True:
            if kind == 0:
                ident = f"{rng.choice(['INC', 'OPS', 'PAY', 'SEC'])}-{rng.randrange(10000, 99999)}"
            elif kind == 1:
                ident = f"E{rng.randrange(1000, 9999)}"
            else:
                unit = rng.choice(["lines", "rows", "items", "chunks"])
                ident = f"{rng.choice(VERBS)}_{rng.choice(NOUNS)}_{unit}_v{rng.randrange(2, 9)}"
            if ident not in used:
                used.add(ident)
                break
        p, s = rng.choice(PEOPLE), rng.choice(SERVICES)
        sym, fix = rng.choice(SYMPTOMS), rng.choice(FIXES)
        if kind == 0:
            text = f"{p} closed {ident}: the {s} service {sym}, fixed by {fix}"
        elif kind == 1:
            text = f"{s} fails with error {ident} when it {sym}; {p} suggests {fix}"
        else:
            text = f"{ident}() in the {s} module {sym} until {p} tried {fix}"
        mid = add(text)
        if i % 9 == 0:  # 100 questions, a third of each kind
            queries.append({"query": rng.choice(QUESTIONS).format(x=ident), "kind": "identifier",
                            "relevant": [mid]})

    # order: (person, a, b, context) with the reverse said by someone else in the same context
    pairs = [(a, b) for a in DRINKS for b in DRINKS if a != b]
    for i in range(400):
        a, b = rng.choice(pairs)
        ctx = rng.choice(CONTEXTS)
        p, q = rng.sample(PEOPLE, 2)
        mid = add(f"{p} prefers {a} to {b} {ctx}")
        add(f"{q} prefers {b} to {a} {ctx}")
        if i % 4 == 0:
            queries.append({"query": f"prefers {a} to {b} {ctx}", "kind": "order",
                            "relevant": [mid], "pair": [a, b, ctx]})
    # every memory that says the same ordered preference in the same context is relevant
    for q_ in queries:
        if q_["kind"] == "order":
            a, b, ctx = q_.pop("pair")  # type: ignore[misc]
            q_["relevant"] = sorted(m for m, t in memories.items()
                                    if t.endswith(f" prefers {a} to {b} {ctx}"))

    # paraphrases: each fact said of three people; the question asks it in other words
    for fact, question in PARAPHRASES:
        ps = rng.sample(PEOPLE, 3)
        rel = [add(fact.format(p=p)) for p in ps]
        queries.append({"query": question, "kind": "paraphrase", "relevant": rel})

    while len(memories) < 3000:
        add(rng.choice(FILLER).format(p=rng.choice(PEOPLE), s=rng.choice(SERVICES)))

    ids = list(memories)
    rng.shuffle(ids)  # order of insertion should not decide ties
    return {
        "about": __doc__.split("\n\n")[0] if __doc__ else "",
        "seed": seed,
        "memories": {i: memories[i] for i in ids},
        "queries": queries,
    }


def main() -> None:
    """Write tests/data/retrieval_corpus.json."""
    OUT.write_text(json.dumps(build(), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
