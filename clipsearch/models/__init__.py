"""Models shipped inside the package (the offline demo model lives in models/shapes/)."""
