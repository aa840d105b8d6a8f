"""The tour's HTML page: one section per part (``*_section``), the interactive views, and
the page around them (``page``). Numbers come from ``results.json``'s dict; the findings'
wording from ``findings.py``."""

from __future__ import annotations

from html import escape
from typing import Any

from .findings import NAMES, POSITION_NAMES, RESNET_NAMES, SPEECH_NAMES, acc, bits, fit_text, se_text
from .stats import REPRODUCIBLE, RULE


_CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1d2330;background:#fcfcfd}
h1{font-size:1.9em;margin-bottom:.1em}h2{border-bottom:2px solid #d6dbe6;padding-bottom:.2em;margin-top:2em}
.sub{color:#5b6475;margin-top:0}.box{background:#eef3fb;border-left:4px solid #3b6fb6;padding:.6em 1em;
border-radius:4px}table{border-collapse:collapse;margin:1em 0;font-size:.95em}
th,td{border:1px solid #d6dbe6;padding:.3em .7em;text-align:right}th{background:#f0f2f7}
td.l,th.l{text-align:left}figure{margin:1.2em 0}img{max-width:100%;height:auto;border:1px solid #e3e6ee;
background:#fff}figcaption{color:#5b6475;font-size:.9em}.grid{display:flex;flex-wrap:wrap;gap:1em}
.grid figure{flex:1 1 420px}code,.mono{font-family:ui-monospace,Consolas,monospace}.bad{color:#b3261e}
.warn{background:#fff4e5;border-left-color:#d9822b}.mech{background:#fff;border:1px solid #e3e6ee;border-radius:6px;padding:.2em 1em;margin:1em 0}
"""


def _fig(src: str, caption: str) -> str:
    return (f'<figure><img src="{escape(src)}" alt="{escape(caption)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def _table(head: list[str], rows: list[list[Any]], left: int = 1) -> str:
    def cells(tag: str, row: list[Any]) -> str:
        return "".join(f'<{tag}{" class=l" if i < left else ""}>{c}</{tag}>' for i, c in enumerate(row))
    body = "".join(f"<tr>{cells('td', r)}</tr>" for r in rows)
    return f"<table><tr>{cells('th', head)}</tr>{body}</table>"


def vision_section(v: dict[str, Any]) -> str:
    t, m, f = v["task"], v["models"], v["figures"]
    rows = [[NAMES[n], acc(m[n]["accuracy_mean"], m[n]["accuracy_std"]),
             " ".join(f"{a:.3f}" for a in m[n]["accuracies"]), f"{m[n]['train_accuracy_mean']:.3f}",
             f"{m[n]['params']:,}", f"{m[n]['seconds']:.1f}"]
            for n in NAMES if n in m]
    loc = [[f"stage {s['stage']}", f"{s['resolution']}x{s['resolution']}", f"{s['mean']:.2f} ± {s['std']:.2f}",
            " ".join(f"{x:.2f}" for x in s["per_seed"]),
            f"{s['digit_vs_clutter_ink_mean']:.2f} ± {s['digit_vs_clutter_ink_std']:.2f}"]
           for s in v["cbam_localization_per_stage"]]
    n = len(v["seeds"])
    seeds = f"{n} seed" + ("s" if n != 1 else "")
    fits = fit_text(v)
    se_figs = "".join(_fig(f[k], f"SE model, stage {k[len('se_stage'):]}: mean gate per class (rows) and channel")
                      for k in sorted(f) if k.startswith("se_stage"))
    cbam_figs = "".join(_fig(f[k], f"CBAM spatial gate of stage {k[len('cbam_stage'):]}: each test image (left) "
                                   "beside its gate map (right, colour scale fixed at 0 to 1); red box = the true digit")
                        for k in sorted(f) if k.startswith("cbam_stage"))
    return f"""
<h2>Vision: finding a digit in clutter</h2>
<p>Each {t['canvas']}x{t['canvas']} canvas holds one real handwritten digit (an 8x8 UCI digit upscaled to
{t['digit_size']}x{t['digit_size']}) at a random position among {t['n_fragments']}
{t['fragment_size']}x{t['fragment_size']} fragments of other digits; train and test canvases are built from
disjoint sets of source digit images. The same small CNN (three conv stages, widths {', '.join(map(str, t['widths']))}, global average pooling) is trained three ways with identical data,
batch order, initial weights of the shared layers and budget ({t['n_train']} training images, {t['epochs']} epochs,
batch {t['batch_size']}), for {seeds}; accuracy is on {t['n_test']} test canvases.</p>
{_table(['model', 'test accuracy (mean ± sd)', 'per seed', 'train accuracy (mean)', 'parameters',
         'train seconds'], rows)}
<p>The comparisons with the baseline are in the Findings at the top. {' '.join(escape(t) for t in fits)}</p>
{_fig(f['accuracy'], f'Test accuracy, mean ± sd over {seeds}')}
{_fig(f['curves'], f'Training loss and test accuracy per epoch, mean of {seeds}; one colour per model, '
                   'the same as in the bar chart')}
<div class="mech"><h3>Squeeze-and-Excitation (channel attention)</h3>
<p>An SE block squeezes each feature map to one number (its spatial mean), passes these channel descriptors
through a small bottleneck MLP and a sigmoid, and multiplies every channel by its gate in (0, 1). It can
say <em>which</em> features matter for this image, not <em>where</em> they are.
The heatmaps show the mean gate per digit class and channel: a column that changes colour between rows is a channel
the network turns up or down depending on the digit; identical rows mean the gate ignores the input. The
colour scale is fixed at 0 to 1 (the sigmoid's range), so a gate stuck near 1 shows as one flat colour.
{escape(se_text(v))}</p>{se_figs}</div>
<div class="mech"><h3>CBAM: channel, then spatial attention</h3>
<p>CBAM first gates channels (like SE, from both the average- and the max-pooled descriptors), then gates
<em>positions</em>: a 7x7 convolution over the channel-wise mean and max maps and a sigmoid give one weight per
pixel, shared by all channels. On this task a useful spatial gate should be high on the digit and low on the
fragments.</p>
<p>Localization: the <em>box ratio</em> is the mean gate inside the digit's true box (scaled to the gate's
resolution) divided by the mean gate over the whole map, averaged over test images; 1.0 means no localization and,
as the box covers a quarter of the canvas, 4.0 is the most possible. The headline number is stage 1's gate, the
finest one. A gate that simply lit up wherever there is ink would also score above 1, so the last column compares
like with like: the mean gate on inked cells inside the box over that on inked cells outside it (the fragments).
The finding is in the Findings at the top; per stage:</p>
{_table(['stage', 'gate size', 'box ratio (mean ± sd over seeds)', 'per seed',
         'digit ink / clutter ink'], loc)}{cbam_figs}</div>"""


def resnet_section(r: dict[str, Any]) -> str:
    t, m, f = r["task"], r["models"], r["figures"]
    n = len(r["seeds"])
    rows = [[RESNET_NAMES[k], m[k]["gates"], f"{m[k]['params']:,}", f"{m[k]['train_accuracy_mean']:.3f}",
             acc(m[k]["accuracy_mean"], m[k]["accuracy_std"]),
             f"{m[k]['gap_points_mean']:+.1f} ± {m[k]['gap_points_std']:.1f}", f"{m[k]['seconds']:.1f}"]
            for k in RESNET_NAMES if k in m]
    return f"""
<h2>SE and CBAM added to an existing ResNet</h2>
<p>The survey says SE is not a network of its own but is combined with existing CNNs such as ResNet, and that one
can, crudely, add it after every convolution, at the risk of overfitting. Here a small ResNet (a strided stem and
{len(t['widths'])} basic blocks, widths {', '.join(map(str, t['widths']))}), written with no attention in it, gets
its gates from <code>attnzoo.add_attention(model, kind, where=...)</code>: <code>where="blocks"</code> puts one gate
on the residual branch of every block, before the addition (the SE-ResNet placement); <code>where="convs"</code>
puts one after every convolution. Same cluttered digits as above, {t['n_train']} training canvases,
{t['epochs']} epochs, batch {t['batch_size']}, {n} seed{'s' if n > 1 else ''}; reduction {t['reduction']}; shared
layers start from the same weights in every variant. Train accuracy is measured on the training canvases in
evaluation mode after training; the gap is train minus test accuracy in points.</p>
{_table(['variant', 'gates', 'parameters', 'train accuracy', 'test accuracy (mean ± sd)', 'gap (points)',
         'train seconds'], rows)}
{_fig(f['train_test'], 'Train (pale) and test (solid) accuracy per variant; one colour per variant')}
{_fig(f['curves'], 'Training loss and test accuracy per epoch, mean over seeds')}"""


def speech_section(sp: dict[str, Any]) -> str:
    t, m, f, a = sp["task"], sp["models"], sp["figures"], sp["attention"]
    n = len(sp["seeds"])
    seeds = f"{n} seed" + ("s" if n != 1 else "")
    rows = [[SPEECH_NAMES[h], acc(m[h]["accuracy_mean"], m[h]["accuracy_std"]),
             " ".join(f"{x:.3f}" for x in m[h]["accuracies"]), f"{m[h]['train_accuracy_mean']:.3f}",
             f"{m[h]['params']:,}", f"{m[h]['seconds']:.1f}"] for h in SPEECH_NAMES if h in m]
    return f"""
<h2>Speech: temporal attention, who is speaking?</h2>
<p>UCI <em>Japanese Vowels</em> (Kudo, Toyama &amp; Shimbo 1999; CC BY 4.0): 9 male speakers say the vowels /ae/;
each utterance is {t['frames'][0]}–{t['frames'][1]} frames of 12 LPC cepstrum coefficients. Official split:
{t['n_train']} training and {t['n_test']} test utterances; the task is to name the speaker. One encoder, a
{t['encoder']} with {t['hidden']} units, reads the frames; three heads turn its outputs into one vector for a linear
classifier: the <em>last state</em> (output at the last real frame), the <em>masked mean</em> over the real frames,
and <code>TemporalAttention</code>, a learned weight per frame (softmax over the real frames; padding gets exactly
0) and the weighted mean. Same encoder initialisation, data order and budget ({t['epochs']} epochs, batch
{t['batch_size']}), {seeds}.</p>
{_table(['head', 'test accuracy (mean ± sd)', 'per seed', 'train accuracy (mean)', 'parameters', 'train seconds'],
        rows)}
<div class="mech"><h3>Temporal attention</h3>
<p>An additive (Bahdanau) score v<sup>T</sup>tanh(W h<sub>t</sub> + b) for every frame's encoder output
h<sub>t</sub>, a softmax over the frames of the utterance, and the weighted average of the h<sub>t</sub>. A plain mean
gives every frame the weight 1/length; the last state relies on the recurrence to carry everything to the end. Below:
the weights for a few test utterances of each of the 9 speakers (rows grouped by speaker; blank = after the utterance
ended). Weighted position {a['centre_mean']:.2f} (0 = first frame, 1 = last); weight on the last frame
{a['last_frame_weight_mean']:.2f} on average.</p>
{_fig(f['attention'], 'Temporal attention weights over the frames of test utterances, grouped by speaker')}</div>
{_fig(f['accuracy'], f'Test accuracy per head, mean ± sd over {seeds}')}"""


def views_section(views: list[dict[str, str]]) -> str:
    """Interactive attention views (HTML files beside the report, e.g. from
    ``attnzoo.viz.attention_view``), embedded when ``results["views"]`` lists them."""
    items = "".join(f'<h3>{escape(v.get("title", v["file"]))}</h3><p><a href="{escape(v["file"])}">open in its own '
                    f'tab</a></p><iframe src="{escape(v["file"])}" title="{escape(v.get("title", v["file"]))}" '
                    'style="width:100%;height:640px;border:1px solid #d6dbe6"></iframe>' for v in views)
    return f"\n<h2>Interactive attention views</h2>\n{items}"


def dates_section(d: dict[str, Any]) -> str:
    mdl, tr, ca, f = d["model"], d["train"], d["cross_attention"], d["figures"]
    head = ["exact match", "character accuracy", "held-out dates", "parameters", "train seconds"]
    main = _table(head, [[f"{d['exact_match']:.3f}", f"{d['char_accuracy']:.3f}", d["n_test"],
                          f"{d['params']:,}", f"{d['seconds']:.1f}"]], left=0)
    fmt_rows = [[f"<code>{escape(k)}</code>", f"{x:.3f}"] for k, x in d["per_format_exact_match"].items()]
    ex = [[f"<span class=mono>{escape(e['input'])}</span>", f"<span class=mono>{escape(e['target'])}</span>",
           f"<span class='mono{'' if e['prediction'] == e['target'] else ' bad'}'>{escape(e['prediction'])}</span>"]
          for e in d["examples"]]
    err = [[f"<span class=mono>{escape(e['input'])}</span>", f"<span class=mono>{escape(e['target'])}</span>",
            f"<span class='mono bad'>{escape(e['prediction'])}</span>"] for e in d["errors"]]
    wf = d["wrong_fields"]
    counts = ", ".join(f"{k} {wf[k]}" for k in ("year", "month", "day", "malformed") if wf[k])
    errors = (f"<p>{d['n_errors']} of {d['n_test']} held-out dates were wrong; fields wrong (a date can count "
              f"twice): {counts}.</p>" + _table(["input", "target", "prediction"], err, left=3) if err
              else "<p>No held-out date was wrong.</p>")
    mass = min(ca["weekday_mass_per_layer"])
    skip = (f"The weekday name gets as little as {mass:.0%} of the attention though it is "
            f"{ca['weekday_char_share']:.0%} of the characters: the decoder mostly looks past it."
            if mass < 0.8 * ca["weekday_char_share"] else
            f"The weekday name gets {mass:.0%} or more of the attention and is {ca['weekday_char_share']:.0%} "
            "of the characters: the decoder does not skip it.")
    layers = [[f"layer {i + 1}", f"{a:.1%}", f"{b:.1%}", f"{c:.1%}"] for i, (a, b, c) in enumerate(
        zip(ca["field_per_layer"], ca["exact_position_per_layer"], ca["weekday_mass_per_layer"]))]
    cross = "".join(_fig(c["file"], f"Cross-attention of decoder layer {c['layer']} for {c['input']!r}: output "
                                    "characters (rows) over input characters (columns), "
                                    + ("each head and their mean" if c["per_head"] else "mean over heads"))
                    for c in f["cross"])
    return f"""
<h2>Sequences: date normalisation with cross-attention</h2>
<p>Human-written dates in {len(d['per_format_exact_match'])} formats are rewritten as ISO <code>YYYY-MM-DD</code>,
one character per token, by an encoder-decoder Transformer (d_model {mdl['d_model']}, {mdl['nhead']} heads,
{mdl['encoder_layers']}+{mdl['decoder_layers']} layers) trained on {tr['n_train']} pairs for {tr['epochs']} epochs.
Test dates are calendar days never seen in training; decoding is greedy with the key/value cache.</p>
{main}
{_table(['input format', 'exact match'], fmt_rows)}
{_fig(f['curves'], 'Training loss and held-out exact match per epoch')}
<h3>Examples (held-out)</h3>{_table(['input', 'target', 'prediction'], ex, left=3)}
<h3>Mistakes (up to 10)</h3>{errors}
<div class="mech"><h3>Cross-attention</h3>
<p>In cross-attention the decoder's queries (one per output character) look at the encoder's keys (one per input
character): each output row is a probability distribution over input positions, and the output is the weighted mix
of the input's values. To write the year, the decoder should look at the year in the input; to write the month, at
the month name or number. The heatmaps below show this alignment as a (permuted) diagonal. Measured on formats
whose output digits are copies of input digits at known places ({', '.join(ca['formats'])}): the share of output
digits whose most-attended input character (mean over heads) lies in the right field, is the very character
copied, and, for <code>weekday_long</code> inputs, the share of attention spent on the weekday name, which
carries no information the date does not (it is {ca['weekday_char_share']:.0%} of the characters).</p>
{_table(['decoder layer', 'right field', 'exact character', 'mass on weekday name'], layers)}
<p>{escape(skip)}</p>{cross}</div>
<div class="mech"><h3>Self-attention</h3>
<p>In self-attention queries, keys and values all come from the same sequence, so every position can gather
context from every other one: in the encoder a digit can learn whether it belongs to the day or the year from
the separators and words around it, which is what lets the decoder's cross-attention pick the right one. In the
decoder, self-attention is causal: output character j sees only characters before it (the upper triangle is
empty), which is what makes step-by-step generation with a key/value cache possible.</p>
{_fig(f['encoder_self'], 'Encoder self-attention (last layer), each head and their mean')}
{_fig(f['decoder_self'], 'Decoder self-attention (last layer, causal), mean over heads')}</div>"""


def page(results: dict[str, Any], findings: list[tuple[str, str]], body: str) -> str:
    """The whole report page around the parts' sections: inline CSS, no scripts, figures
    by relative file name."""
    items = "".join(f"<li><strong>{escape(topic)}.</strong> {escape(text)}</li>" for topic, text in findings)
    only = results.get("only")
    note = f" Only the {only} part was run (--only {only})." if only else ""
    env = results["environment"]
    quick = ('<p class="box warn"><strong>Quick run: a smoke test.</strong> <code>--quick</code> trains on small '
             "budgets (fewer samples, epochs and seeds, higher learning rates) only to show that every model learns; "
             "its numbers are not the tour's findings and say nothing reliable about which mechanism is better. Run "
             "<code>attnzoo demo</code> for those.</p>") if results["quick"] else ""
    when = f" · {escape(env['date'])}" if env.get("date") else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>attnzoo tour: what attention buys</title><style>{_CSS}</style></head><body>
<h1>attnzoo tour: what attention buys</h1>
<p class="sub">Seed {results['seed']}{' · quick run (small budget)' if results['quick'] else ''} ·
device {escape(env['device'])} · torch {escape(env['torch'])} · {results['seconds']:.0f} s in all{when}.{escape(note)}</p>
{quick}<div class="box"><strong>Findings</strong><ul>{items}</ul>
<p>How they are worded: {escape(RULE)}.</p></div>
{body}
<h2>Reproduce</h2>
<p><code>attnzoo demo --seed {results['seed']}{' --quick' if results['quick'] else ''}
{f'--only {escape(only)}' if only else ''}</code>: {escape(REPRODUCIBLE)}. Every number on this page is in
<code>results.json</code>.</p>
</body></html>
"""


def positions_section(p: dict[str, Any]) -> str:
    t, sch, f = p["task"], p["schemes"], p["figures"]
    n, ctx = len(p["seeds"]), t["context"]
    rows = [[POSITION_NAMES[s], *(bits(a, b) for a, b in zip(m["bits_mean"], m["bits_std"])),
             f"{m['train_bits_mean']:.3f}", f"{m['params']:,}", f"{m['seconds']:.1f}"]
            for s, m in ((s, sch[s]) for s in POSITION_NAMES if s in sch)]
    return f"""
<h2>Positions: what a position scheme buys, and beyond the training length</h2>
<p>Attention alone cannot tell order; a causal mask tells a little (a query sees only what came before it). Here
the same small decoder-only Transformer ({t['layers']} layers, d_model {t['d_model']}, {t['nhead']} heads, causal
<code>attnzoo.functional.scaled_dot_product_attention</code>) learns to predict the next character of <em>Tiny
Shakespeare</em> ({t['n_train_chars']:,} training characters, {t['vocab']} distinct) with five position schemes:
<em>learned absolute</em> (a trained table of {ctx} rows added to the embeddings), <em>sinusoidal</em> (the fixed
sin/cos table, added), <em>RoPE</em> (<code>attnzoo.RotaryEmbedding</code> rotates queries and keys),
<em>ALiBi</em> (<code>attnzoo.alibi_bias</code>, a penalty growing with distance, added to the scores) and
<em>none</em> (NoPE). Same initial weights of the shared layers, same batches ({t['steps']} steps of
{t['batch_size']} windows of {ctx} characters), {n} seed{'s' if n > 1 else ''}.</p>
<p>Evaluation: {t['n_windows']} windows at fixed places of the validation text; in each only the last
{t['scored']} predictions count, so every context scores the same {t['scored_chars']:,} characters, at context C each
with C − {t['scored']} to C − 1 characters before it. Beyond {ctx} the models meet positions and distances never seen in
training; learned absolute positions have no rows there (n/a). Bits per character, mean ± sd over seeds; a model
that ignores all context (unigram frequencies) gets {t['unigram_bits']:.2f}.</p>
{_table(['positions', *(f'bits/char at {c}' for c in t['eval_contexts']), 'train bits/char (last tenth)',
         'parameters', 'train seconds'], rows)}
{_fig(f['context'], f'Validation loss against evaluation context, mean ± sd over {n} seeds; dashed: the training '
                    'context')}"""
