# network/gamer_client.py
import asyncio
import websockets
import json
import uuid

class GamerClient:
    def __init__(self, gamer_id, coordinator_url='ws://localhost:8765'):
        self.gamer_id = gamer_id
        self.coordinator_url = coordinator_url
        self.websocket = None
        self.pending_tasks = {}  # task_id -> asyncio.Future
    
    async def connect(self):
        """Connect to coordinator"""
        self.websocket = await websockets.connect(self.coordinator_url)
        
        # Register
        await self.websocket.send(json.dumps({
            'msg_type': 'register_gamer',
            'gamer_id': self.gamer_id
        }))
        
        # Start listening for results
        asyncio.create_task(self.listen_for_results())
    
    async def listen_for_results(self):
        """Background task to receive results"""
        async for message in self.websocket:
            data = json.loads(message)
            
            if data['msg_type'] == 'task_result':
                task_id = data['task_id']
                if task_id in self.pending_tasks:
                    future = self.pending_tasks[task_id]
                    future.set_result(data['result'])
    
    async def submit_task(self, task_type, task_data, timeout=5.0):
        """Submit a task and wait for result"""
        task_id = str(uuid.uuid4())
        
        # Create future to wait for result
        future = asyncio.Future()
        self.pending_tasks[task_id] = future
        
        # Submit task
        await self.websocket.send(json.dumps({
            'msg_type': 'task_request',
            'task_id': task_id,
            'task_type': task_type,
            'task_data': task_data
        }))
        
        # Wait for result with timeout
        try:
            result = await asyncio.wait_for(future, timeout=timeout)
            return result
        except asyncio.TimeoutError:
            del self.pending_tasks[task_id]
            raise TimeoutError(f"Task {task_id} timed out after {timeout}s")
        finally:
            if task_id in self.pending_tasks:
                del self.pending_tasks[task_id]
    
    async def submit_physics_task(self, num_objects=10):
        """Helper: Submit physics task"""
        return await self.submit_task('physics', {'num_objects': num_objects})
    
    async def submit_ai_task(self, model_name='default'):
        """Helper: Submit AI task"""
        return await self.submit_task('ai', {'model': model_name})

if __name__ == '__main__':
    async def demo():
        client = GamerClient('demo_gamer')
        await client.connect()
        
        print("Submitting physics task...")
        result = await client.submit_physics_task(num_objects=50)
        print(f"Result: {result}")
    
    asyncio.run(demo())
