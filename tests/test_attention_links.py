"""Attention-output SAEs linked both ways in the viewer: a hook_z latent's feature API and page show its
heads and DFA (read from attention.safetensors), and the head explorer's list of the latents writing
through a head, gathered from every hook_z run of the store, links to /run/<run>?feature=<i>, which
opens that feature (in Chromium). Runs are copies of test_attention_sae's evaluated run."""

import json
import shutil
from urllib.parse import unquote

import pytest
import torch

from tests.conftest import free_port, serving
from tests.test_attention_sae import zrun  # noqa: F401  (the module-scoped evaluated hook_z run)
from workbench.runs import ATTENTION_FILE, SAE_CONFIG_FILE
from workbench.sae.attention import AttentionTable
from workbench.viewer import api
from workbench.viewer.attention_sae import head_explorer_section, store_head_latents
from workbench.viewer.store import RunStore


def _copy(zrun, root, name: str, hook: str | None = None, model_name: str | None = None, shares=None):  # noqa: F811
    """A copy of the evaluated run as `root/name`, its sae_config.json's hook or model changed, its
    attention table's shares replaced by planted ones."""
    d = root / name
    shutil.copytree(zrun.root / zrun.name, d)
    cfg = json.loads((d / SAE_CONFIG_FILE).read_text())
    cfg["config"].update({k: v for k, v in (("hook_name", hook), ("model_name", model_name)) if v is not None})
    (d / SAE_CONFIG_FILE).write_text(json.dumps(cfg))
    if shares is not None:
        att = zrun.att
        AttentionTable(shares, att.dfa, att.dfa_rest, att.bias, att.pre).save(d / ATTENTION_FILE)
    return d


def _planted(on: dict[int, tuple[int, float]]) -> torch.Tensor:
    """Shares of 24 latents over 4 heads: all on head 0, except latent f with share s on head h."""
    shares = torch.zeros(24, 4)
    shares[:, 0] = 1.0
    for f, (h, s) in on.items():
        shares[f] = (1 - s) / 3
        shares[f, h] = s
    return shares


def test_feature_api_adds_the_heads_and_dfa_of_a_hook_z_latent(zrun, tmp_path):  # noqa: F811
    store = RunStore(zrun.root)
    f = int(zrun.table.top_values[:, 0].argmax())
    got = api.feature(store, zrun.name, str(f))
    assert set(got["figures"]) >= {"feat-hist", "feat-logits", "feat-corr", "feat-heads", "feat-dfa-0"}
    assert 'id="feat-heads"' in got["attention_html"] and 'id="feat-dfa-0"' in got["attention_html"]
    assert got["figures"]["feat-heads"]["data"][0]["y"] == pytest.approx(zrun.att.shares[f].tolist())
    heat = got["figures"]["feat-dfa-0"]["data"][0]  # head 0's row, second from the top
    assert heat["z"][-2] == pytest.approx(zrun.att.dfa[f, 0, 0].tolist())

    _copy(zrun, tmp_path, "resid", hook="blocks.1.hook_resid_post")
    gone = _copy(zrun, tmp_path, "old")
    (gone / ATTENTION_FILE).unlink()
    broken = _copy(zrun, tmp_path, "broken")
    (broken / ATTENTION_FILE).write_bytes(b"\x00" * 20)
    store = RunStore(tmp_path)
    plain = api.feature(store, "resid", str(f))
    assert plain["attention_html"] == "" and "feat-heads" not in plain["figures"]  # another hook: nothing
    assert "evaluate it again" in api.feature(store, "old", str(f))["attention_html"]
    bad = api.feature(store, "broken", str(f))  # the file is named, the feature's contexts still come
    assert f"{ATTENTION_FILE} is unreadable" in bad["attention_html"] and bad["contexts_html"]


def test_store_head_latents_ranks_every_hook_z_run_on_the_layer(zrun, tmp_path):  # noqa: F811
    _copy(zrun, tmp_path, "a&b", shares=_planted({5: (2, 0.9), 7: (2, 0.6), 8: (3, 0.99)}))
    _copy(zrun, tmp_path, "c", shares=_planted({1: (2, 0.75)}))
    _copy(zrun, tmp_path, "layer0", hook="blocks.0.attn.hook_z", shares=_planted({2: (2, 1.0)}))
    _copy(zrun, tmp_path, "other-model", model_name="gpt2", shares=_planted({3: (2, 0.95)}))
    _copy(zrun, tmp_path, "resid", hook="blocks.1.hook_resid_post", shares=_planted({4: (2, 1.0)}))
    store = RunStore(tmp_path)
    rows = store_head_latents(store, 1, 2, model_name="tiny")
    assert [(r.run, r.latent) for r in rows] == [("a&b", 5), ("c", 1), ("a&b", 7)]
    assert [r.share for r in rows] == pytest.approx([0.9, 0.75, 0.6])
    assert rows[0].density == pytest.approx(float(zrun.table.density[5]))
    anyone = store_head_latents(store, 1, 2)  # no model named: the gpt2-recorded run counts too
    assert [(r.run, r.latent) for r in anyone][:2] == [("other-model", 3), ("a&b", 5)]
    assert [r.latent for r in store_head_latents(store, 0, 2)] == [2]
    assert store_head_latents(store, 1, 2, min_share=0.8, limit=1, model_name="tiny")[0][:2] == ("a&b", 5)
    assert store_head_latents(store, 1, 7) == []  # these runs' model has 4 heads

    sec = head_explorer_section(store, 1, 2)
    assert 'href="/run/a%26b?feature=5"' in sec.html and ">a&amp;b<" in sec.html and "a&b<" not in sec.html
    assert sec.figures == {}  # several runs: the table only
    assert "No latent" in head_explorer_section(store, 1, 1).html
    one = head_explorer_section(store, 0, 2).json()
    assert one["figures"]["head-latents"]["data"][0]["x"] == pytest.approx([1.0])


def test_a_head_link_opens_the_latent_with_its_heads_in_chromium(zrun):  # noqa: F811
    from tests.test_viewer import _chromium, _open
    from workbench.viewer.server import create_app

    exe = _chromium()
    from playwright.sync_api import sync_playwright

    store = RunStore(zrun.root)
    f = int(zrun.table.top_values[:, 0].argmax())
    head = int(zrun.att.shares[f].argmax())
    hrefs = [h.split('"')[0] for h in head_explorer_section(store, 1, head, min_share=0.0).html.split('href="')[1:]]
    href = next(h for h in hrefs if h.endswith(f"?feature={f}"))  # a latent with top contexts (the first may be dead)
    assert unquote(href).startswith(f"/run/{zrun.name}?feature=")
    port = free_port()
    with serving(create_app(zrun.root), port) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox", "--disable-gpu"])
        wanted = int(href.rsplit("=", 1)[1])
        page, response, errors = _open(browser, url + href)
        assert response.status == 200
        page.wait_for_function(f"document.getElementById('contexts').dataset.feature === '{wanted}'")
        page.wait_for_selector("#feat-heads.js-plotly-plot")
        page.wait_for_selector("#feat-dfa-0.js-plotly-plot")
        assert page.input_value("#feature") == str(wanted)
        run = href.split("/")[2].split("?")[0]
        page.goto(f"{url}/run/{run}?feature={f}")
        page.wait_for_function(f"document.getElementById('contexts').dataset.feature === '{f}'")
        assert "L1H" in page.inner_text("#feat-attention")
        page.goto(f"{url}/run/{run}?feature=99")  # out of range: said, not thrown
        page.wait_for_selector("#contexts .error")
        assert page.inner_text("#contexts .error").startswith("feature must be an integer in [0, 24)")
        assert errors == []
        browser.close()
