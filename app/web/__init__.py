"""The dashboard's static assets (HTML, plain JavaScript modules, CSS); no build step, no CDN."""

from __future__ import annotations

from pathlib import Path

WEB_DIR = Path(__file__).resolve().parent
