"""Open a report in headless Chromium with the network blocked; print what drew, as JSON.
usage: browser_probe.py CHROMIUM REPORT.html SCREENSHOT.png (run by test_html.py in its own process)"""
import json
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

exe, page_path, shot = sys.argv[1:4]
errors = []
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
    ctx = browser.new_context(viewport={"width": 1200, "height": 900})
    ctx.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:") else route.abort())
    page = ctx.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(Path(page_path).resolve().as_uri())
    page.wait_for_function("document.querySelectorAll('.sf-chart .main-svg').length >= "
                           "document.querySelectorAll('.sf-chart').length", timeout=30000)
    charts = page.evaluate("""() => Array.from(document.querySelectorAll('.sf-chart')).map(d => {
        const gd = d.querySelector('.js-plotly-plot');
        const t = gd && gd.data ? gd.data[0] : {x: [], y: []};
        return {name: d.dataset.name, declared: Number(d.dataset.points),
                drawn: d.querySelectorAll('.scatterlayer .trace:first-child .point, .barlayer .point').length,
                drawn_all: d.querySelectorAll('.scatterlayer .point').length,
                x: Array.from(t.x || []), y: Array.from(t.y || [])};
    })""")
    page.screenshot(path=shot, full_page=True)
    browser.close()
print(json.dumps({"errors": errors, "charts": charts}))
