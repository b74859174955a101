"""Pages render without exceptions (Streamlit's AppTest)."""

from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT


def test_home_page_shows_version_device_and_model():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception
    labels = [m.label for m in at.metric]
    assert labels == ["Version", "Device", "Compute dtype"]
    assert at.metric[1].value.startswith(("cpu", "cuda"))
    assert any("SmolLM2-135M-Instruct" in m.value for m in at.markdown)
