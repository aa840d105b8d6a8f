"""attention_view: the page's data and, in headless Chromium, what a reader sees and clicks."""

import base64
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import attnzoo as az
from attnzoo.maps.view import attention_view, view_layers
from attnzoo.record import AttentionRecorder

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
Q = 65535  # the page stores round(w * 65535)
TOL = 1.0 / Q  # quantisation (<= 0.5/Q) plus the 6 printed decimals


@pytest.fixture(scope="module")
def generation():
    torch.manual_seed(3)
    model = az.Seq2SeqTransformer(11, 13, d_model=16, nhead=2, num_encoder_layers=2, num_decoder_layers=2,
                                  dim_feedforward=32, dropout=0.0, max_len=16).eval()
    src = torch.randint(3, 11, (2, 7))
    with AttentionRecorder(model) as rec:
        out = model.generate(src, 6, bos_id=1, eos_id=12)  # eos never wins: every row decodes 6 steps
    src_tokens = [f"s{j}<b>" for j in range(7)]  # markup in labels must stay text
    out_tokens = [f"t{i}" for i in range(out.size(1))]
    return rec, src_tokens, out_tokens


def _data(page: str) -> dict:
    blob = re.search(r'<script id="az-data" type="application/json">(.*?)</script>', page, re.S).group(1)
    return json.loads(blob)


def _decoded(layer: dict) -> np.ndarray:
    raw = np.frombuffer(base64.b64decode(layer["data"]), dtype="<u2")
    return raw.reshape(layer["heads"], layer["rows"], layer["cols"]) / Q


def test_layers_stack_decoding_steps(generation):
    rec, _, _ = generation
    layers = dict(view_layers(rec, batch=1))
    assert list(layers) == ["encoder_layers.0.self_attn", "encoder_layers.1.self_attn", "decoder_layers.0.self_attn",
                            "decoder_layers.0.multihead_attn", "decoder_layers.1.self_attn",
                            "decoder_layers.1.multihead_attn"]
    T = len(rec["decoder_layers.0.self_attn"])
    self_attn = layers["decoder_layers.0.self_attn"]  # (H, T, T): step t saw keys 0..t
    assert self_attn.shape == (2, T, T) and np.all(np.triu(self_attn, 1) == 0)
    for t, step in enumerate(rec["decoder_layers.0.self_attn"]):
        np.testing.assert_array_equal(self_attn[:, t, : t + 1], step[1, :, 0].double().numpy())
    cross = np.stack([s[1, :, 0].double().numpy() for s in rec["decoder_layers.1.multihead_attn"]], axis=1)
    np.testing.assert_array_equal(layers["decoder_layers.1.multihead_attn"], cross)


def test_page_is_self_contained_and_holds_the_weights(generation, tmp_path):
    rec, src_tokens, out_tokens = generation
    page = attention_view(rec, tokens=src_tokens, query_tokens=out_tokens, title="a <title>")
    for ref in ("src=", "href=", "url(", "@import", "fetch(", "XMLHttpRequest", "<link", "<iframe"):
        assert ref not in page
    assert page.count("</script>") == 2 and "s0<b>" not in page and "a &lt;title&gt;" in page
    data = _data(page)
    layers = dict(view_layers(rec))
    for layer in data["layers"]:
        np.testing.assert_allclose(_decoded(layer), layers[layer["label"]], rtol=0, atol=0.5 / Q)
    enc, cross = data["layers"][0], data["layers"][3]
    assert enc["q"] == src_tokens and enc["k"] == src_tokens  # 7 encoder queries: the source tokens
    assert cross["q"] == out_tokens and cross["k"] == src_tokens
    rows = attention_view(rec, tokens=src_tokens, rows=range(1, 7, 2))
    sub = _data(rows)["layers"][0]
    assert sub["row_ids"] == [1, 3, 5] and sub["q"] == ["s1<b>", "s3<b>", "s5<b>"]
    np.testing.assert_allclose(_decoded(sub), layers["encoder_layers.0.self_attn"][:, 1:7:2], rtol=0, atol=0.5 / Q)
    path = tmp_path / "view.html"
    assert attention_view(rec, path=path) == path and path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["view.html"]


def test_bad_arguments(generation, tmp_path):
    rec, _, _ = generation
    path = tmp_path / "v.html"
    path.write_text("keep")
    with pytest.raises(ValueError, match=r"more than max_cells=100 weights in all \(reached at layer "
                                         r"'encoder_layers.1.self_attn': 2 heads x 7 rows x 7 keys\); pass fewer rows="):
        attention_view(rec, path=path, max_cells=100)  # 98 weights in the first layer, 196 with the second
    assert path.read_text() == "keep"
    with pytest.raises(ValueError, match="window must be an int in \\[1, 512\\], got 0"):
        attention_view(rec, window=0)
    with pytest.raises(ValueError, match=r"rows must select query rows of 0..6"):
        attention_view(rec, rows=[9])
    with pytest.raises(TypeError, match="records must be an AttentionRecorder"):
        attention_view([1, 2])
    with pytest.raises(ValueError, match=r"records\['x #0'\] must have shape \(B, H, L, S\), \(H, L, S\) or \(L, S\)"):
        attention_view({"x": torch.rand(5)})
    with pytest.raises(ValueError, match=r"batch must index the 2 sequences"):
        attention_view(rec, batch=2)
    with pytest.raises(ValueError, match="hold no attention map"):
        attention_view([])


# ------------------------------------------------------------------------------ the browser
@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM.exists() and DRIVER.exists()):
        pytest.skip(f"headless Chromium is not installed ({CHROMIUM}, {DRIVER}): apt-get install chromium "
                    "chromium-driver (.ci/run does)")
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager look for a driver online
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=opts)
    driver.set_window_size(1400, 1000)
    yield driver
    driver.quit()


def _open(driver, path: Path) -> None:
    driver.get(path.as_uri())
    assert driver.execute_script("return document.body.dataset.ready") == "1"  # the script ran to its end


def _shown(driver):
    """What the page shows for the selected query: header, top keys, lines (DOM state)."""
    from selenium.webdriver.common.by import By

    top = [(int(li.get_attribute("data-col")), float(li.get_attribute("data-weight")))
           for li in driver.find_elements(By.CSS_SELECTOR, "#top li")]
    lines = [(int(e.get_attribute("data-row")), int(e.get_attribute("data-col")), float(e.get_attribute("data-weight")))
             for e in driver.find_elements(By.CSS_SELECTOR, "#lines line")]
    return driver.find_element(By.ID, "sel").text, top, lines


def _check_top(top, w: np.ndarray) -> None:
    """The 10 listed keys are the 10 largest weights of the row, with their values."""
    assert len(top) == min(10, w.size)
    np.testing.assert_allclose([v for _, v in top], np.sort(w)[::-1][: len(top)], rtol=0, atol=TOL)
    for col, v in top:
        assert abs(w[col] - v) <= TOL


def test_browser_pick_layer_head_and_token(browser, generation, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    rec, src_tokens, out_tokens = generation
    path = attention_view(rec, tokens=src_tokens, query_tokens=out_tokens, path=tmp_path / "gen.html", batch=1)
    _open(browser, path)
    layers = view_layers(rec, batch=1)
    labels = [o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, "#layer option")]
    assert labels == [str(i) for i in range(len(layers))]
    li = [name for name, _ in layers].index("decoder_layers.1.multihead_attn")
    w = layers[li][1]  # (H, T, S)
    Select(browser.find_element(By.ID, "layer")).select_by_value(str(li))
    Select(browser.find_element(By.ID, "head")).select_by_value("1")
    browser.find_element(By.CSS_SELECTOR, '.qtok[data-row="3"]').click()
    header, top, lines = _shown(browser)
    assert header == 'Query 3 "t3" (decoder_layers.1.multihead_attn, head 1) attends to:'
    _check_top(top, w[1, 3])
    assert sorted(c for _, c, _ in lines) == [j for j in range(7) if w[1, 3, j] >= 0.005]  # one query's lines
    for r, c, v in lines:
        assert r == 3 and abs(w[1, 3, c] - v) <= TOL
    assert browser.find_element(By.CSS_SELECTOR, '.qtok[data-row="3"]').get_attribute("class") == "qtok sel"

    Select(browser.find_element(By.ID, "head")).select_by_value("mean")  # the pinned token stays
    header, top, _ = _shown(browser)
    assert header.endswith("(decoder_layers.1.multihead_attn, mean of heads) attends to:")
    _check_top(top, w[:, 3].mean(0))

    layer = browser.find_element(By.ID, "layer")
    ActionChains(browser).move_to_element(layer).perform()  # as a reader would, off the tokens
    Select(layer).select_by_value("0")  # a new layer: nothing selected, every query's lines
    header, top, lines = _shown(browser)
    assert header.startswith("Click or hover") and top == []
    assert {r for r, _, _ in lines} == set(range(7)) and len(lines) == int((layers[0][1].mean(0) >= 0.005).sum())
    ActionChains(browser).move_to_element(browser.find_element(By.CSS_SELECTOR, '.qtok[data-row="5"]')).perform()
    header, top, _ = _shown(browser)
    assert header == 'Query 5 "s5<b>" (encoder_layers.0.self_attn, mean of heads) attends to:'
    _check_top(top, layers[0][1][:, 5].mean(0))


def test_browser_4096_tokens_draws_a_window(browser, tmp_path):
    from selenium.webdriver.common.by import By

    n = 4096
    g = torch.Generator().manual_seed(0)
    w = torch.softmax(3 * torch.randn(n, n, generator=g), dim=-1).numpy()  # (L, S), one head
    tokens = [f"w{i}" for i in range(n)]
    t0 = time.perf_counter()
    path = attention_view({"long": w}, tokens=tokens, path=tmp_path / "long.html")
    t1 = time.perf_counter()
    _open(browser, path)
    t2 = time.perf_counter()
    print(f"\n4096x4096: write {t1 - t0:.1f} s, {path.stat().st_size / 2**20:.0f} MiB, open {t2 - t1:.1f} s")
    assert len(browser.find_elements(By.CSS_SELECTOR, ".qtok")) == 64
    assert len(browser.find_elements(By.CSS_SELECTOR, ".ktok")) == 64
    assert len(browser.find_elements(By.CSS_SELECTOR, "#lines line")) <= 64 * 64
    assert browser.execute_script("return document.getElementById('heat').dataset.cell") == "8"  # 64 x 8 = 512 px
    browser.execute_script("const e = document.getElementById('row0'); e.value = 4090;"
                           "e.dispatchEvent(new Event('change'))")  # clamped to the last full window
    rows = [int(e.get_attribute("data-row")) for e in browser.find_elements(By.CSS_SELECTOR, ".qtok")]
    assert rows == list(range(n - 64, n))
    browser.find_element(By.CSS_SELECTOR, '.qtok[data-row="4050"]').click()
    header, top, lines = _shown(browser)
    assert header == 'Query 4050 "w4050" (long) attends to:'
    _check_top(top, w[4050])  # over all 4,096 keys, not only the window
    assert all(r == 4050 and c < 64 for r, c, _ in lines)
    assert browser.execute_script("return document.getElementById('strip').width") == 1024


def test_generation_view_for_a_seq2seq_model(tmp_path):
    from attnzoo import viz
    from attnzoo.maps.generation import generation_view

    torch.manual_seed(4)
    model = az.Seq2SeqTransformer(11, 13, d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=2,
                                  dim_feedforward=32, dropout=0.0, max_len=16).eval()
    src = torch.randint(3, 11, (1, 6))
    path, tokens = generation_view(model, src, tmp_path / "gen.html", bos_id=1, eos_id=12, max_new_tokens=5,
                                   src_tokens=list("abcdef"), token_label=lambda i: f"<{i}>")
    assert torch.equal(tokens, model.generate(src, 5, 1, 12))
    with AttentionRecorder(model) as rec:
        model.generate(src, 5, 1, 12)
    data = _data(path.read_text(encoding="utf-8"))
    assert [layer["label"] for layer in data["layers"]] == ["decoder_layers.0.multihead_attn",
                                                            "decoder_layers.1.multihead_attn"]
    for layer in data["layers"]:
        assert layer["q"] == [f"<{t}>" for t in tokens[0].tolist()] and layer["k"] == list("abcdef")
        steps = torch.cat(rec[layer["label"]], dim=2)[0].double().numpy()  # (H, T, S)
        np.testing.assert_allclose(_decoded(layer), steps, rtol=0, atol=0.5 / Q)
    assert viz.attention_view is attention_view
    with pytest.raises(ValueError, match=r"src must be one source sequence of shape \(1, S\)"):
        generation_view(model, src.repeat(2, 1), tmp_path / "x.html", bos_id=1, eos_id=2, max_new_tokens=3,
                        src_tokens=list("abcdef"))


def _pixel(driver, x: float, y: float) -> list[int]:
    return driver.execute_script(
        "const d = document.getElementById('heat').getContext('2d').getImageData(arguments[0], arguments[1], 1, 1).data;"
        "return [d[0], d[1], d[2]]", int(x), int(y))


def _cell(driver, i: int, j: int) -> list[int]:
    """The colour at the centre of heatmap cell (window row i, window column j)."""
    g = {k: float(v) for k, v in driver.execute_script("return {...document.getElementById('heat').dataset}").items()
         if k in ("x0", "y0", "cell")}
    return _pixel(driver, g["x0"] + (j + 0.5) * g["cell"], g["y0"] + (i + 0.5) * g["cell"])


def _blue(x: float) -> list[int]:  # the page's colour of x in [0, 1]: white (0) to blue (1)
    v = round(255 * (1 - min(max(x, 0.0), 1.0)))
    return [v, v, 255]


def test_browser_heatmap_axes_colour_bar_and_scales(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    g = torch.Generator().manual_seed(5)
    near_uniform = torch.softmax(0.05 * torch.randn(12, 12, generator=g, dtype=torch.float64), dim=-1)  # (L, S)
    path = attention_view({"flat": near_uniform}, tokens=[f"tok{i}" for i in range(12)], path=tmp_path / "flat.html")
    _open(browser, path)
    w = np.rint(near_uniform.numpy() * Q) / Q  # what the page holds
    label = browser.find_element(By.ID, "heat").get_attribute("aria-label")
    assert label == "heatmap: rows = query tokens 0..11, columns = key tokens 0..11; colour scale fixed 0 to 1"
    assert Select(browser.find_element(By.ID, "scale")).first_selected_option.get_attribute("value") == "fixed"
    for i, j in [(0, 0), (3, 7), (11, 11)]:  # fixed 0-1: about 1/12 everywhere, so pale, not saturated
        assert max(abs(a - b) for a, b in zip(_cell(browser, i, j), _blue(w[i, j]))) <= 1
    assert min(_cell(browser, 3, 7)) > 200
    geo = browser.execute_script("return {...document.getElementById('heat').dataset}")
    bar, y0, h = float(geo["bar"]), float(geo["y0"]), float(geo["barHeight"])
    assert _pixel(browser, bar + 7, y0) == [0, 0, 255] and _pixel(browser, bar + 7, y0 + h - 1) == [255, 255, 255]
    Select(browser.find_element(By.ID, "scale")).select_by_value("row")  # each row against its own largest weight
    assert browser.find_element(By.ID, "heat").get_attribute("aria-label").endswith("colour scale per row (row max)")
    for i, j in [(0, 0), (3, 7), (11, 11)]:
        assert max(abs(a - b) for a, b in zip(_cell(browser, i, j), _blue(w[i, j] / w[i].max()))) <= 1
    assert _cell(browser, 4, int(w[4].argmax())) == [0, 0, 255]


def test_browser_head_choice_only_with_heads_and_long_labels_fit(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    long40 = "a_token_label_of_exactly_forty_chars_xyz"
    huge = "x" * 80 + "_the_end_of_a_very_long_label"
    tokens = ["a", long40, huge, "b"]
    g = torch.Generator().manual_seed(6)
    records = {"one head": torch.rand(4, 4, generator=g), "two heads": torch.rand(2, 4, 4, generator=g)}
    _open(browser, attention_view(records, tokens=tokens, path=tmp_path / "labels.html"))
    head = browser.find_element(By.ID, "head")
    assert not head.is_displayed()  # one head: no "all heads" choice offered
    browser.find_element(By.CSS_SELECTOR, '.qtok[data-row="1"]').click()
    assert browser.find_element(By.ID, "sel").text == f'Query 1 "{long40}" (one head) attends to:'
    Select(browser.find_element(By.ID, "layer")).select_by_value("1")
    assert head.is_displayed()
    assert [o.text for o in Select(head).options] == ["mean of heads", "head 0", "head 1"]
    for cls in ("qtok", "ktok"):
        labels = browser.execute_script(
            "const svg = document.getElementById('lines'), w = Number(svg.getAttribute('width'));"
            f"return [...document.querySelectorAll('.{cls}')].map((e) => {{ const b = e.getBBox();"
            "  return [e.firstChild.nodeValue, e.querySelector('title').textContent, b.x, b.x + b.width, w]; })")
        assert [full for _, full, *_ in labels] == tokens  # the whole label on hover
        shown = [text for text, *_ in labels]
        assert shown[:2] + shown[3:] == ["a", long40, "b"]  # not cut
        assert shown[2].endswith("\u2026") and huge.startswith(shown[2][:-1]) and len(shown[2]) > 40
        for text, _, left, right, width in labels:
            assert 0 <= left and right <= width, (cls, text, left, right, width)  # inside the drawing
