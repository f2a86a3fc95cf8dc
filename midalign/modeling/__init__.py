"""A causal LM as midalign runs it, whatever its family: loading (:mod:`.loading`, with its
adapter files checked by :mod:`.adapters`), ``--dtype`` (:mod:`.dtypes`), placement over devices
(:mod:`.placement`), its decoder layers (:mod:`.layers`), the early-exit pooled forward and the
task loss (:mod:`.forward`), the compiled forward (:mod:`.compiled`), prompts as token ids
(:mod:`.prompting`) and batched greedy generation (:mod:`.generate`, :mod:`.decode`)."""
