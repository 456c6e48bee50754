"""Draft tokens for speculative decoding: what a sequence proposes to verify in one step, and how many.

A draft costs one batch position a token and saves a whole step for each token accepted, so a sequence
drafts only where it has a reason to believe the text repeats: the request's own prediction (OpenAI's
Predicted Outputs), or, with prompt lookup on for the model, an n-gram of the text so far found earlier in
the prompt or the answer (the tokens after it are the draft). A lookup's place is then followed, like a
prediction's: while the answer goes on as the text after the match did, the next draft is what comes next
there, with no new lookup, so an answer that copies a passage keeps to that passage rather than jumping to
wherever its last few tokens (a common "    self.") happened to come last. Nothing here decides what is emitted:
the batcher samples every position with the request's own sampler and keeps drafted tokens only while they
equal what it sampled, so the output is what it would have been without a draft (exactly, with greedy
decoding; in distribution, with sampling, since every emitted token is still drawn from the model's own
distribution given the tokens before it).

How long a draft is adapts per sequence: it doubles after a draft accepted whole, shrinks to what was
accepted plus one after a miss, and after a draft rejected outright the sequence drafts nothing for a
while (1, 2, 4 ... up to 32 steps), so a workload that never repeats costs almost nothing. Within that,
a draft is cut to the length that pays (`step_cost`: the chance each token is kept, from this sequence's
own record, against what a larger step costs on this device); one that does not pay at all is not sent,
but for a token the first time and every EXPLORE_EVERY steps after, so the record can learn that it would.
"""

from __future__ import annotations

from array import array

from neuron.shared.speculative import MAX_DRAFT, SpecConfig

PAUSE_MAX = 32  # the longest a sequence rests from drafting after drafts rejected outright
EXPLORE_EVERY = 16  # a draft that does not pay is still tried, a token long, this often
# Before a sequence's own record: (kept, missed) as if seen; a prediction is usually the answer's text.
PRIORS = {"prediction": (4.0, 1.0), "ngram": (1.0, 1.0), "draft": (2.0, 1.0)}


class TokenText:
    """Tokens kept as 32-bit words too, so a lookup is bytes.find in C rather than a Python loop."""

    def __init__(self, tokens: list[int] = ()):
        self.words = array("I", tokens)
        self.raw = bytearray(self.words.tobytes())

    def __len__(self) -> int:
        return len(self.words)

    def extend(self, tokens: list[int]) -> None:
        more = array("I", tokens)
        self.words.extend(more)
        self.raw += more.tobytes()

    def find(self, pattern: list[int], start: int = 0, end: int | None = None) -> int:
        """The first token index >= start where `pattern` begins and ends by `end`; -1 if none."""
        needle, stop = array("I", pattern).tobytes(), len(self.raw) if end is None else end * 4
        at = self.raw.find(needle, start * 4, stop)
        while at >= 0 and at % 4:  # a match across two tokens' bytes: look on
            at = self.raw.find(needle, at + 1, stop)
        return at // 4 if at >= 0 else -1

    def rfind(self, pattern: list[int], end: int) -> int:
        """The last token index where `pattern` begins and ends by token `end`; -1 if none."""
        needle, stop = array("I", pattern).tobytes(), end * 4
        at = self.raw.rfind(needle, 0, stop)
        while at >= 0 and at % 4:
            at = self.raw.rfind(needle, 0, at + len(needle) - 1)
        return at // 4 if at >= 0 else -1


class Drafter:
    """One sequence's drafts: from its prediction first, then (with `spec`) from its own text so far. The
    batcher tells it each token the sequence emits (`emitted`) and each draft's fate (`verified`)."""

    def __init__(self, prompt: list[int], prediction: list[int] | None, spec: SpecConfig | None):
        self.spec = spec
        self.prediction = TokenText(prediction) if prediction else None
        lookup = spec is not None and spec.method == "ngram"
        self.text = TokenText(prompt) if lookup else None  # the prompt, then the answer
        self.track: int | None = None  # where in `text` the answer's next token should be, after a lookup
        self.out: list[int] = []  # the answer so far (its tail is looked up in the prediction)
        self.cursor, self.on_track = 0, True  # where in the prediction the answer's next token should be
        self.length = self.most = spec.max_draft if spec is not None else MAX_DRAFT
        self.pause, self.rest = 0, 1
        self.offered: list[int] = []  # this step's draft from a draft model (`llamacpp_draft`), if it ran
        self.verifying: list[int] | None = None  # the draft being verified, still matching the tokens emitted
        self.verify_at = 0
        method = spec.method if spec is not None else "ngram"
        self.record = {"prediction": list(PRIORS["prediction"]), "model": list(PRIORS[method])}  # kept, missed
        self.declined = 0  # drafts not sent because they would not pay
        self.from_prediction = False  # the draft being verified came from the prediction
        self.proposed = self.accepted = 0  # every draft token, for the model's metrics
        self.predicted_accepted = self.predicted_rejected = 0  # the prediction's, for the answer's usage

    def start_verify(self, draft: list[int]) -> None:
        """A draft goes to verification: counted as proposed (and, from the prediction, as rejected until
        `emitted` finds its tokens in the answer), so figures read at the answer's end are whole."""
        self.verifying, self.verify_at = draft, 0
        self.proposed += len(draft)
        if self.from_prediction:
            self.predicted_rejected += len(draft)

    def emitted(self, token: int) -> None:
        self._count_verified(token)
        self.out.append(token)
        if self.text is not None:
            self._follow_track(token)
            self.text.extend([token])
        pred = self.prediction
        if pred is not None and self.on_track:
            if self.cursor < len(pred) and pred.words[self.cursor] == token:
                self.cursor += 1
            else:
                self.on_track = False

    def chance(self, source: str) -> float:
        """The chance a drafted token from `source` ("prediction" or "model") is kept, by this record."""
        kept, missed = self.record[source]
        return kept / (kept + missed)

    def model_wanted(self, room: int, pays=None) -> int:
        """How many tokens a draft model should draft for this step: none while resting, or while the
        prediction has a draft to give (asked before `propose`, so the draft model runs only for those)."""
        limit = min(self.length, room)
        if limit <= 0 or self.pause or self._from_prediction(limit):
            return 0
        return self._paying("model", limit, pays)

    def propose(self, room: int, pays=None) -> list[int]:
        """Up to `room` tokens to verify after the sequence's next one (empty: a plain step); `pays(p, n)`
        says how many of n tokens kept with chance p are worth their place in the step."""
        offered, self.offered = self.offered, []
        limit = min(self.length, room)
        if limit <= 0:
            return []
        if self.pause:
            self.pause -= 1
            return []
        draft = self._from_prediction(limit)
        self.from_prediction = bool(draft)
        if draft:
            draft = draft[:self._paying("prediction", len(draft), pays)]
            self.from_prediction = bool(draft)
        elif offered:  # the draft model's, its length judged before it ran (model_wanted)
            draft = offered[:limit]
        elif self.text is not None:
            draft = self._from_text(limit)
            draft = draft[:self._paying("model", len(draft), pays)] if draft else draft
        return draft

    def _paying(self, source: str, limit: int, pays) -> int:
        if pays is None or limit <= 0:
            return limit
        length = pays(self.chance(source), limit)
        if length == 0:
            self.declined += 1
            if self.declined % EXPLORE_EVERY == 1:  # the first one, then every EXPLORE_EVERY-th
                return 1
        return length

    def context(self, prompt: list[int]) -> list[int]:
        """The sequence's whole text so far: the prompt, then the answer (its last token not yet in the cache)."""
        return prompt + self.out

    def _from_prediction(self, limit: int) -> list[int]:
        pred = self.prediction
        if pred is None or not self.on_track and not self._resync(pred):
            return []
        return pred.words[self.cursor:self.cursor + limit].tolist()

    def _resync(self, pred: TokenText) -> bool:
        """Off the prediction's track (the answer differed): find the answer's last tokens in it, nearest after
        where it left, and go on from there."""
        for n in range(min(4, len(self.out)), 0, -1):
            tail = self.out[-n:]
            at = pred.find(tail, max(self.cursor - n, 0))
            if at < 0:
                at = pred.rfind(tail, len(pred))
            if at >= 0 and at + n < len(pred):
                self.cursor, self.on_track = at + n, True
                return True
        return False

    def _follow_track(self, token: int) -> None:
        track, text = self.track, self.text
        if track is not None:
            self.track = track + 1 if track < len(text) and text.words[track] == token else None

    def _from_text(self, limit: int) -> list[int]:
        text, spec = self.text, self.spec
        if self.track is not None:
            draft = text.words[self.track:self.track + limit].tolist()
            if draft:
                return draft
        for n in range(min(spec.ngram_max, len(text) - 1), spec.ngram_min - 1, -1):
            tail = text.words[len(text) - n:].tolist()
            at = text.rfind(tail, len(text) - 1)  # an earlier occurrence, not the tail itself
            if at >= 0:
                self.track = at + n
                return text.words[at + n:at + n + limit].tolist()
        return []

    def _count_verified(self, token: int) -> None:
        draft = self.verifying
        if draft is None:
            return
        if self.verify_at < len(draft) and token == draft[self.verify_at]:
            self.verify_at += 1
            self.accepted += 1
            if self.from_prediction:
                self.predicted_accepted += 1
                self.predicted_rejected -= 1
        else:
            self.verifying = None  # the rest of the draft is rejected (already counted so)

    def verified(self, proposed: int, accepted: int) -> None:
        """A draft of `proposed` tokens was verified and its first `accepted` kept: the record, and the next
        draft's length."""
        self.verifying = None
        record = self.record["prediction" if self.from_prediction else "model"]
        record[0] += accepted
        record[1] += 1 if accepted < proposed else 0
        if accepted == proposed:
            self.length, self.rest = min(self.length * 2, self.most), 1
        elif accepted:
            self.length, self.rest = accepted + 1, 1
        else:
            self.length = 1
            self.pause, self.rest = self.rest, min(self.rest * 2, PAUSE_MAX)
