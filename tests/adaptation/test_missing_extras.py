"""Without the `adapters` extra (peft), LoRA training says how to install it, before any model loads."""
import pytest

from ragkit.adaptation.base import AdapterError


def test_lora_training_without_peft_gives_the_install_hint(missing, tmp_path):
    from ragkit.adaptation.train import finetune

    missing("peft")
    with pytest.raises(AdapterError, match=r"pip install 'ragkit\[adapters\]'"):
        finetune("a model that is never loaded", "some text", tmp_path / "lora", kind="lora", steps=1)
    assert not (tmp_path / "lora").exists()
