"""SIGTERM ends a block of work with the caller's named error, even where the signal lands
inside a per-item `except Exception` (the image decoder's)."""

from __future__ import annotations

import io
import os
import signal
import time

import pytest
from PIL import Image

from dinoflow.errors import DinoflowError
from dinoflow.interrupts import raise_on_sigterm


class Told(DinoflowError):
    pass


def _sigterm_here() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(1)  # the handler runs at the next bytecode: inside this call


def test_a_per_item_except_exception_does_not_swallow_the_signal():
    swallowed = []
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Told, match="SIGTERM"):
        with raise_on_sigterm(lambda name: Told(f"stopped by {name}")):
            for _ in range(3):
                try:
                    _sigterm_here()
                except Exception as e:  # noqa: BLE001 - what per-item handlers do
                    swallowed.append(e)
    assert swallowed == []
    assert signal.getsignal(signal.SIGTERM) == before


def test_sigterm_inside_the_decoder_stops_curation_instead_of_marking_the_image_corrupt(monkeypatch):
    from dinoflow.curation.pipeline import Stopped, _stopped
    from dinoflow.data import decode

    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    real_open = Image.open

    def open_then_sigterm(*args, **kwargs):
        img = real_open(*args, **kwargs)
        _sigterm_here()  # lands in decode_image's `except Exception` around Image.open
        return img

    monkeypatch.setattr(decode.Image, "open", open_then_sigterm)
    with pytest.raises(Stopped, match="stopped by SIGTERM"):
        with raise_on_sigterm(_stopped):
            decode.decode_image(buf.getvalue())
