"""Lightning callbacks: they observe a DistillModule's training and write what it produced."""
