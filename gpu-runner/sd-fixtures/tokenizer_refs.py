"""Reference ids for the runner's CLIP tokenizer (gpu-runner/src/tokenizers/clip.ts).

Writes gpu-runner/test/fixtures/sd-refs/tokenizer/:
  clip/            a small CLIP-style BPE vocabulary saved by transformers.CLIPTokenizer, pad = <|endoftext|> (SD 1.x)
  clip-pad-bang/   the same vocabulary, pad = "!" (id 0; OpenCLIP: SD 2.x, SDXL's tokenizer_2)
  cases.json       the test strings and, for each, the ids CLIPTokenizer gives with padding="max_length",
                   max_length=77, truncation=True, stored without their padding (the script checks the padding)

Run: HF_HUB_OFFLINE=1 gpu-runner/sd-fixtures/.venv/bin/python gpu-runner/sd-fixtures/tokenizer_refs.py
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import tiny_vocab
import transformers
from transformers import CLIPTokenizer, CLIPTokenizerFast

import tokenizers

OUT = Path(__file__).resolve().parents[1] / "test" / "fixtures" / "sd-refs" / "tokenizer"
MAX_LENGTH = 77
N_MERGES = 1500
SEED = 19

WORDS = (
    "a photo of the cat dog astronaut riding horse on mars castle at sunset oil painting highly detailed portrait "
    "woman man child old young red blue green golden light dark forest city street night rain snow mountain lake "
    "river boat ship sky clouds stars moon sun flower garden house window door table chair book lamp cinematic "
    "lighting 8k render unreal engine trending artstation watercolor sketch anime style masterpiece best quality "
    "ultra sharp focus bokeh depth field wide angle lens macro vintage film grain surreal fantasy sci-fi cyberpunk "
    "steampunk medieval knight dragon wizard robot spaceship alien ocean waves beach palm tree desert dunes"
).split()
ACCENTED = "café naïve résumé façade jalapeño Ångström crème brûlée São Paulo Zürich über Straße Ærø smørrebrød Łódź İstanbul ΟΔΟΣ Σίσυφος".split()
CJK = [
    "猫",
    "富士山",
    "東京の夜景",
    "一只可爱的猫",
    "水彩画",
    "고양이",
    "서울의 밤",
    "さくら",
    "カタカナ",
    "𠀀𠀁",
    "中文English混合",
    "日本語のテキスト",
]
EMOJI = ["😀", "🐱", "🚀", "🔥🔥🔥", "👍🏽", "👩‍💻", "👨‍👩‍👧‍👦", "🏳️‍🌈", "❤️", "🇯🇵", "✨", "🌊🏄‍♂️", "☕"]
COMBINING = ["e\u0301", "a\u0308", "n\u0303", "Z\u0335\u0321a\u0337l\u0336g\u0334o", "o\u0302\u0323", "\u0041\u030a"]
PUNCT = [
    "!!!",
    "...",
    "?!",
    "---",
    "(((masterpiece)))",
    "[[detailed]]",
    "{a|b}",
    ":)",
    ";-)",
    "<lora:x:0.8>",
    "#tag",
    "@user",
    "$100",
    "50%",
    "a/b\\c",
    "``quoted''",
    '"quoted"',
    "«guillemets»",
    "—em—dash–",
    "…",
]
APOS = [
    "it's",
    "don't",
    "they're",
    "we've",
    "I'm",
    "you'll",
    "she'd",
    "IT'S",
    "Don'T",
    "rock'n'roll",
    "'s",
    "o'clock",
    "can't've",
]
NUMBERS = [
    "1024x1024",
    "3.14159",
    "2024",
    "1,000,000",
    "v1.5",
    "SD2.1",
    "4k",
    "1st",
    "-42",
    "0.5",
    "١٢٣",
    "Ⅻ",
    "½",
    "²",
]
HTML = ["<b>bold</b>", "&amp;", "&lt;tag&gt;", "<br/>", "<img src='x.png'>", "&#39;", '<p class="a">text</p>']
WHITESPACE = [" ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u2003", " \t\n "]
ODD = ["\u200b", "\u200d", "\ufeff", "\x00", "\x0b", "\x0c", "\x85", "\u2028", "\ufffd", "\x7f"]
SPECIAL = ["<|startoftext|>", "<|endoftext|>"]


def _case(rng: random.Random, word: str) -> str:
    r = rng.random()
    return word.upper() if r < 0.15 else word.capitalize() if r < 0.3 else word


def _sentence(rng: random.Random, n_words: int, pools: list[list[str]], sep: list[str]) -> str:
    parts = []
    for _ in range(n_words):
        pool = rng.choice(pools)
        parts.append(_case(rng, rng.choice(pool)))
        parts.append(rng.choice(sep))
    return "".join(parts[:-1])


def test_strings() -> list[str]:
    """≥ 1,000 strings, deterministic: every category of the issue, then mixtures of them."""
    rng = random.Random(SEED)
    fixed = ["", " ", "a", "A", "!", "a photo of an astronaut riding a horse on mars"]
    fixed += ACCENTED + CJK + EMOJI + COMBINING + PUNCT + APOS + NUMBERS + HTML + SPECIAL
    fixed += [f"a{w}b" for w in WHITESPACE + ODD]
    fixed += [f"cat {s} dog" for s in SPECIAL] + ["<|endoftext|><|startoftext|>", "<|ENDOFTEXT|>"]
    out = list(fixed)
    plain_sep = [" ", " ", " ", ", ", " "]
    # Captions: plain, then with every kind of noise mixed in.
    out += [_sentence(rng, rng.randint(3, 20), [WORDS], plain_sep) for _ in range(250)]
    noisy_pools = [WORDS, WORDS, ACCENTED, CJK, EMOJI, COMBINING, PUNCT, APOS, NUMBERS, HTML]
    noisy_sep = plain_sep + WHITESPACE + ["", ",", ".", " - ", "!", "'", "\u200d"]
    out += [_sentence(rng, rng.randint(1, 25), noisy_pools, noisy_sep) for _ in range(450)]
    out += [_sentence(rng, rng.randint(1, 10), [CJK, EMOJI, ACCENTED], ["", " ", "\u3000"]) for _ in range(100)]
    out += [_sentence(rng, rng.randint(1, 12), [PUNCT, APOS, NUMBERS, ODD], ["", " ", "\t"]) for _ in range(60)]
    # Over-long prompts (100-300 words): truncation to 75 tokens + eos.
    out += [
        _sentence(rng, rng.randint(100, 300), [WORDS, WORDS, WORDS, PUNCT, EMOJI, NUMBERS], plain_sep)
        for _ in range(60)
    ]
    # Whitespace runs and mixed case around plain words.
    out += [
        rng.choice(WHITESPACE) * rng.randint(1, 4) + _sentence(rng, 4, [WORDS], WHITESPACE) + rng.choice(WHITESPACE)
        for _ in range(60)
    ]
    seen: set[str] = set()
    return [s for s in out if not (s in seen or seen.add(s))]


def training_corpus() -> list[str]:
    """tiny_vocab's captions plus captions over this file's word lists, so the trainer finds ~1,500 merges."""
    rng = random.Random(SEED + 1)
    pools = [WORDS, WORDS, WORDS, ACCENTED, APOS, NUMBERS, COINED]
    return BASE_CORPUS() + [_sentence(rng, rng.randint(4, 16), pools, [" ", ", "]) for _ in range(6000)]


# Derived words (prefix + word + suffix) give the trainer enough distinct words for ~1,500 merges.
COINED = [
    p + w + s
    for p in ("", "un", "re", "over", "hyper")
    for w in WORDS[::3]
    for s in ("", "ing", "ed", "ly", "ness", "s")
]


BASE_CORPUS = tiny_vocab.caption_corpus


def save(tok, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    tok.save_pretrained(str(dst))


def main() -> None:
    vocab_dir = OUT / "clip"
    if OUT.exists():
        shutil.rmtree(OUT)  # a stale tokenizer_config.json would carry the old special-token ids
    tiny_vocab.caption_corpus = training_corpus  # same trainer and layout, a larger corpus
    vocab = tiny_vocab.write_vocab(vocab_dir, n_merges=N_MERGES)
    n_merges = len((vocab_dir / "merges.txt").read_text(encoding="utf-8").splitlines()) - 1
    slow = tiny_vocab.clip_tokenizer(vocab_dir, tiny_vocab.EOS)
    slow_bang = tiny_vocab.clip_tokenizer(vocab_dir, "!")
    fast = CLIPTokenizerFast.from_pretrained(str(vocab_dir), pad_token=tiny_vocab.EOS, model_max_length=MAX_LENGTH)
    assert slow.__class__ is CLIPTokenizer and not slow.is_fast and fast.is_fast
    save(slow, vocab_dir)
    save(slow_bang, OUT / "clip-pad-bang")

    strings = test_strings()
    assert len(strings) >= 1000, len(strings)
    enc = lambda t, s: t(s, padding="max_length", max_length=MAX_LENGTH, truncation=True)  # noqa: E731
    cases, fast_diffs, bang_diffs = [], [], {}
    for i, s in enumerate(strings):
        a, b, c = enc(slow, s), enc(slow_bang, s), enc(fast, s)
        n = sum(a.attention_mask)
        assert len(a.input_ids) == MAX_LENGTH and a.input_ids[n:] == [slow.pad_token_id] * (MAX_LENGTH - n)
        m = sum(b.attention_mask)
        assert b.input_ids[m:] == [slow_bang.pad_token_id] * (MAX_LENGTH - m)
        cases.append({"text": s, "ids": a.input_ids[:n]})
        if b.input_ids[:m] != a.input_ids[:n]:
            bang_diffs[str(i)] = b.input_ids[:m]
        if c.input_ids != a.input_ids:
            fast_diffs.append(i)
    doc = {
        "generator": "gpu-runner/sd-fixtures/tokenizer_refs.py",
        "reference": f"transformers {transformers.__version__} CLIPTokenizer (slow, Python BPE; ftfy not installed, so "
        "BasicTokenizer clean-up), padding='max_length', max_length=77, truncation=True; ids stored without padding",
        "fast_reference": f"CLIPTokenizerFast (tokenizers {tokenizers.__version__}) over the same files; "
        "fast_differs lists the indices of the strings where it differs from CLIPTokenizer (not the runner's reference)",
        "pad_bang_reference": "CLIPTokenizer with pad_token '!': transformers makes the pad an added special token, so a "
        "'!' in the text is split out as id 0; pad_bang_ids lists the strings whose ids differ from the pad=eos ones",
        "vocab_size": len(vocab),
        "merges": n_merges,
        "max_length": MAX_LENGTH,
        "pad_ids": {"clip": slow.pad_token_id, "clip-pad-bang": slow_bang.pad_token_id},
        "cases": cases,
        "fast_differs": fast_diffs,
        "pad_bang_ids": bang_diffs,
    }
    # One case per line: small, and a diff shows which strings changed.
    body = ",\n".join(json.dumps(c, ensure_ascii=False, separators=(",", ":")) for c in cases)
    head = json.dumps({k: v for k, v in doc.items() if k != "cases"}, ensure_ascii=False, separators=(",", ":"))
    (OUT / "cases.json").write_text(head[:-1] + ',"cases":[\n' + body + "\n]}\n", encoding="utf-8")
    print(
        f"{len(cases)} strings, vocab {len(vocab)}, merges {n_merges}; fast differs from slow on {len(fast_diffs)}, "
        f"pad '!' differs from pad eos on {len(bang_diffs)}"
    )
    for k in fast_diffs[:40]:
        print("  fast≠slow:", repr(strings[k])[:80])


if __name__ == "__main__":
    main()
