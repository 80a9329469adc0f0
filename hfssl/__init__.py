"""hfssl: self-supervised pretraining and transfer learning on text and images, the Hugging Face way.

    import hfssl
    result = hfssl.run("finetune_text", dataset=my_dataset_dict, strategy="lora")

The recipes are also commands (`hfssl mlm`, `accelerate launch -m hfssl.recipes.mlm`); see README.md.
"""

from importlib.metadata import PackageNotFoundError, version

from hfssl.api import Result, run

try:
    __version__ = version("hfssl")  # one source: pyproject.toml
except PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "0+unknown"

__all__ = ["Result", "__version__", "run"]
