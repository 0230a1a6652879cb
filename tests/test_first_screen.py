"""What makes the first screen quick, through the Flask test client: the first layout comes with the
page the browser is on and the router does not render it again; the page fetches early what its first
screen needs; versioned assets, plotly.js too, are kept by the browser; every graph comes with its figure, and the
foot of the Analytics page is mounted after its first screen. (bench/first_screen.py measures the result.)"""
from __future__ import annotations

import json

import pytest

import app as flowerbed_app
from components import analytics as view
from helpers import router_body
from monitor.settings import load_settings


@pytest.fixture(params=["", "/flower"], ids=["root", "prefix"])
def dash_app(request, tmp_path):
    flags = ("--url-prefix", request.param) if request.param else ()
    settings = load_settings(["--broker", "memory://localhost/", "--db", str(tmp_path / "first.db"), *flags], environ={})
    dash_app = flowerbed_app.create_app(settings)
    yield dash_app
    dash_app.server.config["flowerbed_services"].stop()


def components(layout: dict) -> dict[str, dict]:
    """Each component of a layout's JSON with a string id, by id."""
    found, pending = {}, [layout]
    while pending:
        node = pending.pop()
        if isinstance(node, list):
            pending.extend(node)
        elif isinstance(node, dict) and "props" in node:
            if isinstance(node["props"].get("id"), str):
                found[node["props"]["id"]] = node["props"]
            pending.extend(value for value in node["props"].values() if isinstance(value, (dict, list)))
    return found


def test_the_first_layout_comes_with_the_page_the_browser_is_on(dash_app):
    client, prefix = dash_app.server.test_client(), dash_app.config.requests_pathname_prefix
    address = f"{prefix}tasks?q=name%3Aadd"
    layout = components(client.get(f"{prefix}_dash-layout", headers={"Referer": f"http://localhost{address}"}).get_json())
    assert layout["page-address"]["data"] == address
    assert "tasks-grid" in layout and layout["tasks-search"]["value"] == "name:add"
    # Without a Referer the router renders the page, as before.
    bare = components(client.get(f"{prefix}_dash-layout").get_json())
    assert bare["page-address"].get("data") is None and "tasks-grid" not in bare


def test_the_router_shows_the_first_page_once_then_renders_each_navigation(dash_app):
    client, prefix = dash_app.server.test_client(), dash_app.config.requests_pathname_prefix
    first = client.post(f"{prefix}_dash-update-component",
                        json=router_body(f"{prefix}tasks", "?q=x", first_address=f"{prefix}tasks?q=x")).get_json()
    assert first["response"] == {"page-address": {"data": None}}  # the page stays as the layout brought it
    elsewhere = client.post(f"{prefix}_dash-update-component",
                            json=router_body(f"{prefix}analytics", "", first_address=f"{prefix}tasks?q=x")).get_json()
    assert "analytics-range" in json.dumps(elsewhere["response"]["page"]) and elsewhere["response"]["page-address"] == {"data": None}
    again = client.post(f"{prefix}_dash-update-component", json=router_body(f"{prefix}tasks", "?q=x")).get_json()
    assert "tasks-grid" in json.dumps(again["response"]["page"]) and "page-address" not in again["response"]


def test_every_page_fetches_the_grid_and_dropdown_code_with_its_scripts(dash_app):
    client, prefix = dash_app.server.test_client(), dash_app.config.requests_pathname_prefix
    for path in ("", "tasks", "analytics"):
        page = client.get(f"{prefix}{path}").get_data(as_text=True)
        for chunk in flowerbed_app.EARLY_CHUNKS:
            assert f'<link rel="preload" as="script" href="{prefix}_dash-component-suites/{chunk}">' in page
            assert client.get(f"{prefix}_dash-component-suites/{chunk}").status_code == 200


def test_versioned_assets_are_kept_and_others_revalidated(dash_app):
    client, prefix = dash_app.server.test_client(), dash_app.config.requests_pathname_prefix
    kept = "public, max-age=31536000, immutable"
    assert client.get(f"{prefix}assets/style.css?m=1.5").headers["Cache-Control"] == kept
    assert client.get(f"{prefix}assets/style.css").headers.get("Cache-Control") != kept
    page = client.get(prefix).get_data(as_text=True)
    assert f'src="{prefix}assets/theme.js?m=' in page  # Dash links the assets it loads with their version


def test_plotly_js_is_named_by_its_version_and_kept_by_the_browser(dash_app):
    client, prefix = dash_app.server.test_client(), dash_app.config.requests_pathname_prefix
    page = client.get(prefix).get_data(as_text=True)
    config = json.loads(page.split('<script id="_dash-config" type="application/json">')[1].split("</script>")[0])
    address = config["plotlyjs_url"]
    assert address.startswith(f"{prefix}_dash-component-suites/plotly/package_data/plotly.v") and not config["serve_locally"]
    versioned = client.get(address)
    assert versioned.status_code == 200 and versioned.headers["Cache-Control"] == "max-age=31536000"
    assert versioned.get_data() == client.get(f"{prefix}_dash-component-suites/plotly/package_data/plotly.min.js").get_data()


def test_every_graph_comes_drawn_and_the_analytics_foot_mounts_after_the_first_screen(dash_app):
    client, prefix = dash_app.server.test_client(), dash_app.config.requests_pathname_prefix

    def loading(figure):
        return any(note.get("text") == "Loading…" for note in figure["layout"].get("annotations", []))

    def below_first_screen(node) -> dict:
        """The components inside the layout's BelowFirstScreen, by id."""
        if isinstance(node, list):
            return {key: value for child in node for key, value in below_first_screen(child).items()}
        if not isinstance(node, dict) or "props" not in node:
            return {}
        if node["type"] == "BelowFirstScreen":
            assert node["namespace"] == "flowerbed"
            return components(node)
        return below_first_screen([value for value in node["props"].values() if isinstance(value, (dict, list))])

    for path, graphs in (("analytics", view.GRAPHS), ("", view.DASHBOARD_GRAPHS)):
        address = f"http://localhost{prefix}{path}"
        layout = client.get(f"{prefix}_dash-layout", headers={"Referer": address}).get_json()
        found = components(layout)
        assert not any(loading(found[graph]["figure"]) for graph in graphs)
        foot = below_first_screen(layout)
        if path == "analytics":
            assert sorted(graph for graph in graphs if graph in foot) == sorted(view.GRAPHS[4:])
            assert all(grid in foot for grid in view.CSV_GRIDS)
        else:
            assert not foot  # the Dashboard fits its first screen
