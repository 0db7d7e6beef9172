"""What every API route shares: the served lab (switchable), the uploaded vectors, admission."""

from __future__ import annotations

from dataclasses import dataclass, field

from app.api.uploads import UploadedVectors
from app.api.work import Admission
from app.lab import Lab
from app.serving import LabHolder


@dataclass
class ApiContext:
    holder: LabHolder
    uploads: UploadedVectors = field(default_factory=UploadedVectors)
    admission: Admission = field(default_factory=Admission)

    @property
    def lab(self) -> Lab:
        """The lab now (a teacher may switch the model; a request keeps the one it started with)."""
        return self.holder.lab
