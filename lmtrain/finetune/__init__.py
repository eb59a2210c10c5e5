"""Fine-tuning tasks (SFT, classification) on a pretrained model, trained by the same `fit`."""


def finetune_task(recipe):
    """The task that `recipe.task` names (sft or classify), built from the recipe."""
    if recipe.task == "sft":
        from lmtrain.finetune.sft import SftTask

        return SftTask(recipe)
    from lmtrain.finetune.classify import ClassifyTask

    return ClassifyTask(recipe)
