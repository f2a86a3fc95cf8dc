"""`midalign run`: a recipe (:mod:`.recipe`) executed as cached, hashed steps (:mod:`.runner`);
its report is :mod:`midalign.report`'s."""
