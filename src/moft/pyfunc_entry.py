"""The file MLflow executes to build a moft pyfunc model ("models from code": no pickling)."""

import mlflow

from moft.serving import FrontModel

mlflow.models.set_model(FrontModel())
